/* Runs of DataRows, walked in C: the scanned values of a run joined for one content-gate call,
   and a run rewritten with its masked columns' new values.

   Written by hand, not with mypyc like the rest of the data path: these loops run per value of
   every row of a masked or scanned result, and a Python object made per row or per value that
   the work does not need (a slice, an int, a list of values, the parts of a rebuilt message)
   costs more than the whole walk does in C (~20 ns a row). proxy/protocol/rowrun.py holds
   the same functions in Python, as their reference and the fallback of a build without a
   compiler; tests/proxy/test_rowrun.py holds the two to the same answer on any input.

   join_scanned(buf, start, stop, scanned, max_length, max_rows, kind) -> (joined, end, rows)
   mask_run(buf, start, stop, rewrite, fns, max_length, max_rows, kind) -> (out, end, rows, changed)

   Both walk the complete messages of type `kind` at buf[start:stop], one after another, up to
   `max_rows`: DataRows ('D'), or CopyData ('d') of a binary COPY, each holding one tuple,
   which has the same layout (an int16 count, then per value an int32 length, -1 for NULL,
   and the bytes). They stop, taking nothing more, at the first message that is not a
   complete, well-formed one of exactly len(scanned) / len(rewrite) values with a length of at
   most `max_length`: that message is left to the per-row path, which handles it as it
   always did (raising the framing's or the masker's error where it did). They never read outside buf[start:stop].

   join_scanned returns the values of the columns whose byte in `scanned` is non-zero, each
   followed by a NUL byte (NULLs left out), the offset just past the last row taken, and how
   many rows were taken.

   mask_run returns the rows taken, rewritten: the value of a column whose byte in `rewrite` is
   1 becomes fns[i](value) (bytes; None for NULL; the very same object for "unchanged"), one
   whose byte is 2-7 gets the shape the C computes itself for that code (see "Whole values
   masked by name" below; mask_whole(value, code) gives one value's), a NULL stays NULL, every
   other value is copied. `changed` counts the values for which fns[i] returned another object
   than its argument, or that a shape replaced. An exception raised by fns[i] propagates. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static inline uint32_t be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

/* The end of the well-formed message of type `kind` at b[pos:stop] and the joined size of its scanned
   values, or -1 when there is none to take. */
static Py_ssize_t row_end(const unsigned char *b, Py_ssize_t pos, Py_ssize_t stop,
                          const unsigned char *scanned, Py_ssize_t ncols, Py_ssize_t max_length,
                          unsigned char kind, Py_ssize_t *size) {
    if (stop - pos < 7 || b[pos] != kind)
        return -1;
    uint32_t length = be32(b + pos + 1);
    /* 4 (the length itself) + 2 (the column count) at least. */
    if (length < 6 || (Py_ssize_t)length > max_length || (Py_ssize_t)length > stop - pos - 1)
        return -1;
    Py_ssize_t end = pos + 1 + (Py_ssize_t)length;
    Py_ssize_t count = ((Py_ssize_t)b[pos + 5] << 8) | (Py_ssize_t)b[pos + 6];
    if (count != ncols)
        return -1;
    Py_ssize_t p = pos + 7;
    Py_ssize_t joined = 0;
    for (Py_ssize_t i = 0; i < ncols; i++) {
        if (end - p < 4)
            return -1;
        uint32_t raw = be32(b + p);
        p += 4;
        if (raw == 0xFFFFFFFFu)
            continue; /* NULL */
        if (raw > 0x7FFFFFFFu || (Py_ssize_t)raw > end - p)
            return -1; /* another negative length, or past the message */
        if (scanned[i])
            joined += (Py_ssize_t)raw + 1;
        p += (Py_ssize_t)raw;
    }
    if (p != end)
        return -1; /* bytes after the last value */
    *size = joined;
    return end;
}

static PyObject *join_scanned(PyObject *self, PyObject *args) {
    Py_buffer buf, cols;
    Py_ssize_t start, stop, max_length, max_rows;
    unsigned char kind;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*nny*nnb", &buf, &start, &stop, &cols, &max_length, &max_rows, &kind))
        return NULL;
    PyObject *result = NULL;
    if (start < 0 || stop < start || stop > buf.len || max_rows < 0) {
        PyErr_SetString(PyExc_ValueError, "join_scanned: start/stop outside the buffer");
        goto done;
    }
    const unsigned char *b = (const unsigned char *)buf.buf;
    const unsigned char *scanned = (const unsigned char *)cols.buf;
    Py_ssize_t ncols = cols.len;

    /* First pass: how far the run goes and how large the joined values are. */
    Py_ssize_t pos = start, total = 0, rows = 0, size = 0;
    while (rows < max_rows) {
        Py_ssize_t end = row_end(b, pos, stop, scanned, ncols, max_length, kind, &size);
        if (end < 0)
            break;
        total += size;
        pos = end;
        rows++;
    }
    Py_ssize_t run_end = pos;

    PyObject *joined = PyBytes_FromStringAndSize(NULL, total);
    if (joined == NULL)
        goto done;
    /* Second pass over what the first one checked. */
    char *out = PyBytes_AS_STRING(joined);
    for (pos = start; pos < run_end;) {
        Py_ssize_t end = pos + 1 + (Py_ssize_t)be32(b + pos + 1);
        Py_ssize_t p = pos + 7;
        for (Py_ssize_t i = 0; i < ncols; i++) {
            uint32_t raw = be32(b + p);
            p += 4;
            if (raw == 0xFFFFFFFFu)
                continue;
            if (scanned[i]) {
                memcpy(out, b + p, (size_t)raw);
                out += raw;
                *out++ = '\0';
            }
            p += (Py_ssize_t)raw;
        }
        pos = end;
    }
    result = Py_BuildValue("(Nnn)", joined, run_end, rows);
done:
    PyBuffer_Release(&buf);
    PyBuffer_Release(&cols);
    return result;
}

/* A growing output buffer. */
typedef struct {
    char *data;
    Py_ssize_t len, cap;
} out_t;

static int out_reserve(out_t *o, Py_ssize_t more) {
    if (more > PY_SSIZE_T_MAX - o->len) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t need = o->len + more;
    if (need <= o->cap)
        return 0;
    Py_ssize_t cap = o->cap ? o->cap : 4096;
    while (cap < need)
        cap = cap > PY_SSIZE_T_MAX / 2 ? need : cap * 2;
    char *data = PyMem_Realloc(o->data, (size_t)cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    o->data = data;
    o->cap = cap;
    return 0;
}

static inline void put32(char *p, uint32_t v) {
    p[0] = (char)(v >> 24);
    p[1] = (char)(v >> 16);
    p[2] = (char)(v >> 8);
    p[3] = (char)v;
}

/* Patches the length of the message written at o->data[head:] (its kind byte at `head`). */
static int finish_message(out_t *o, Py_ssize_t head) {
    Py_ssize_t length = o->len - head - 1;
    if (length > 0x7FFFFFFF) {
        PyErr_SetString(PyExc_OverflowError, "a masked row is too long");
        return -1;
    }
    put32(o->data + head + 1, (uint32_t)length);
    return 0;
}

/* (out, end, rows, changed): what mask_run and mask_text_run return. */
static PyObject *run_result(out_t *o, Py_ssize_t end, Py_ssize_t rows, Py_ssize_t changed) {
    PyObject *out = PyBytes_FromStringAndSize(o->data ? o->data : "", o->len);
    return out == NULL ? NULL : Py_BuildValue("(Nnnn)", out, end, rows, changed);
}

/* ---- Whole values masked by name, in C ------------------------------------------------------

   A byte of `rewrite` above 1 names a treatment mask_run and mask_text_run apply themselves
   instead of calling fns[i]. fns[i] still computes the same: broker.masking.rows gives these
   codes only to its own functions (REWRITE_CODES), which the per-row path and the Python
   reference call, and tests/proxy/test_rowshapes.py holds the two to the same bytes.

       2 REDACT  3 EMAIL  4 PHONE  5 CARD  6 AUTO    broker.masking.shapes.mask_whole(value, shape)
       7 NULL                                        rows._null: every value becomes NULL

   A column masked by name is the common case of a masked result, and per value the Python
   call chain (the column's function, mask_whole, the e-mail regex, a new bytes object for
   each part of the shape) cost several times what the whole row's walk costs.

   The e-mail and card tests below are broker.masking.detectors.email.FULL and cards.FULL
   written out: each quantifier there is possessive or can only match one way, so a single
   left-to-right pass decides them (see the comments at each step). */

enum {
    REWRITE_CALL = 1,
    SHAPE_REDACT = 2,
    SHAPE_EMAIL = 3,
    SHAPE_PHONE = 4,
    SHAPE_CARD = 5,
    SHAPE_AUTO = 6,
    REWRITE_NULL = 7,
    REWRITE_LAST = REWRITE_NULL,
};

/* A shape is at most this much longer than a non-empty value ("********" for one byte). */
#define SHAPE_GROWTH 8

static inline int is_space(unsigned char c) { /* re's \s for bytes; bytes.strip()'s set */
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}
static inline int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
static inline int is_alpha(unsigned char c) { return (c | 0x20) >= 'a' && (c | 0x20) <= 'z'; }
static inline int is_alnum(unsigned char c) { return is_alpha(c) || is_digit(c); }
static inline int is_local(unsigned char c) { /* [A-Za-z0-9._%+-] */
    return is_alnum(c) || c == '.' || c == '_' || c == '%' || c == '+' || c == '-';
}
static inline int is_label(unsigned char c) { return is_alnum(c) || c == '-'; } /* [A-Za-z0-9-] */

/* v[*s:*e] without the whitespace at both ends (bytes.strip()). */
static inline void strip(const unsigned char *v, Py_ssize_t n, Py_ssize_t *s, Py_ssize_t *e) {
    Py_ssize_t a = 0, b = n;
    while (a < b && is_space(v[a]))
        a++;
    while (b > a && is_space(v[b - 1]))
        b--;
    *s = a;
    *e = b;
}

/* email.mask_whole: "j***@example.com" for a value that is one address, or -1. */
static Py_ssize_t email_shape(const unsigned char *v, Py_ssize_t n, unsigned char *dst) {
    if (memchr(v, '@', (size_t)n) == NULL)
        return -1;
    Py_ssize_t s, e;
    strip(v, n, &s, &e); /* \s* ... \s*\Z: a local part cannot start, nor a TLD end, on a space */
    /* ([A-Za-z0-9._%+-]{1,256}+)@ : the whole run of local characters, then '@' ('@' is not
       one of them, so a run over 256 leaves a local character where '@' must be). */
    Py_ssize_t p = s;
    while (p < e && is_local(v[p]))
        p++;
    Py_ssize_t local_len = p - s;
    if (local_len < 1 || local_len > 256 || p >= e || v[p] != '@')
        return -1;
    Py_ssize_t domain = ++p;
    /* (?:[A-Za-z0-9-]{1,63}+\.){1,8}+ : labels of 1-63 characters each followed by '.', as
       many as there are up to 8; a label that is not followed by '.' ends them unconsumed. */
    int labels = 0;
    while (labels < 8) {
        Py_ssize_t q = p;
        while (q < e && q - p < 63 && is_label(v[q]))
            q++;
        if (q == p || q >= e || v[q] != '.')
            break;
        p = q + 1;
        labels++;
    }
    if (labels == 0)
        return -1;
    /* [A-Za-z]{2,24}+(?![A-Za-z0-9-]) then only spaces to the end. */
    Py_ssize_t q = p;
    while (q < e && q - p < 24 && is_alpha(v[q]))
        q++;
    if (q - p < 2 || q != e)
        return -1; /* at e: v[e], if any, is a space, which the lookahead lets by */
    dst[0] = is_alnum(v[s]) ? v[s] : '*';
    memcpy(dst + 1, "***@", 4);
    memcpy(dst + 5, v + domain, (size_t)(e - domain));
    return 5 + (e - domain);
}

/* Every digit of v[0:n] starred but the last `keep`; with `phone`, other characters than
   "+()-./ " starred too (shapes.mask_phone), else kept (cards.shape). */
static Py_ssize_t star_digits(const unsigned char *v, Py_ssize_t n, Py_ssize_t digits, Py_ssize_t keep, int phone,
                              unsigned char *dst) {
    Py_ssize_t seen = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = v[i];
        if (is_digit(c)) {
            seen++;
            dst[i] = seen > digits - keep ? c : '*';
        } else if (phone) {
            dst[i] = (c == '+' || c == '(' || c == ')' || c == '-' || c == '.' || c == '/' || c == ' ') ? c : '*';
        } else {
            dst[i] = c;
        }
    }
    return n;
}

/* cards.mask_whole: "**** **** **** 4242" for a value that is one card number, or -1. */
static Py_ssize_t card_shape(const unsigned char *v, Py_ssize_t n, int require_luhn, unsigned char *dst) {
    if (n < 12)
        return -1;
    Py_ssize_t s, e;
    strip(v, n, &s, &e);
    /* [0-9](?:[ -]?[0-9]){11,18} : digits, at most one ' ' or '-' between two of them. */
    if (s == e || !is_digit(v[s]) || !is_digit(v[e - 1]))
        return -1;
    Py_ssize_t digits = 0;
    int sep = 0;
    for (Py_ssize_t i = s; i < e; i++) {
        if (is_digit(v[i])) {
            digits++;
            sep = 0;
        } else if ((v[i] == ' ' || v[i] == '-') && !sep) {
            sep = 1;
        } else {
            return -1;
        }
    }
    if (digits < 12 || digits > 19)
        return -1;
    if (require_luhn) {
        if (digits < 13)
            return -1;
        int total = 0, odd = 0;
        static const int doubled[10] = {0, 2, 4, 6, 8, 1, 3, 5, 7, 9};
        for (Py_ssize_t i = e; i-- > s;) {
            if (!is_digit(v[i]))
                continue;
            int d = v[i] - '0';
            total += odd ? doubled[d] : d;
            odd = !odd;
        }
        if (total % 10 != 0)
            return -1;
    }
    return star_digits(v + s, e - s, digits, 4, 0, dst);
}

/* shapes.mask_phone: "+* (***) ***-**67" when there are 4 digits or more, or -1. */
static Py_ssize_t phone_shape(const unsigned char *v, Py_ssize_t n, unsigned char *dst) {
    Py_ssize_t digits = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        digits += is_digit(v[i]);
    if (digits < 4)
        return -1;
    Py_ssize_t s, e;
    strip(v, n, &s, &e);
    return star_digits(v + s, e - s, digits, 2, 1, dst);
}

/* shapes.mask_whole(v[0:n], shape) for n > 0, written at dst (room for n + SHAPE_GROWTH). */
static Py_ssize_t shape_whole(const unsigned char *v, Py_ssize_t n, unsigned char code, unsigned char *dst) {
    Py_ssize_t w = -1;
    switch (code) {
    case SHAPE_EMAIL: w = email_shape(v, n, dst); break;
    case SHAPE_PHONE: w = phone_shape(v, n, dst); break;
    case SHAPE_CARD: w = card_shape(v, n, 0, dst); break;
    case SHAPE_AUTO:
        w = email_shape(v, n, dst);
        if (w < 0)
            w = card_shape(v, n, 1, dst);
        break;
    default: break; /* SHAPE_REDACT */
    }
    if (w <= 0) { /* no shape (an empty one would be "masked" to nothing: it is not a shape) */
        memcpy(dst, "********", 8);
        w = 8;
    }
    return w;
}

/* The `rewrite` bytes checked: every one a known code. */
static int check_codes(const Py_buffer *acts, const char *who) {
    const unsigned char *r = (const unsigned char *)acts->buf;
    for (Py_ssize_t i = 0; i < acts->len; i++) {
        if (r[i] > REWRITE_LAST) {
            PyErr_Format(PyExc_ValueError, "%s: unknown rewrite code %d", who, (int)r[i]);
            return -1;
        }
    }
    return 0;
}

/* mask_whole(value, code) -> bytes | None: one value, as mask_run treats it (for tests). */
static PyObject *mask_whole(PyObject *self, PyObject *args) {
    Py_buffer v;
    unsigned char code;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*b", &v, &code))
        return NULL;
    PyObject *result = NULL;
    if (code < SHAPE_REDACT || code > REWRITE_LAST) {
        PyErr_Format(PyExc_ValueError, "mask_whole: %d is not a shape code", (int)code);
    } else if (code == REWRITE_NULL) {
        result = Py_NewRef(Py_None);
    } else if (v.len == 0) {
        result = PyBytes_FromStringAndSize("", 0);
    } else {
        result = PyBytes_FromStringAndSize(NULL, v.len + SHAPE_GROWTH);
        if (result != NULL) {
            Py_ssize_t w = shape_whole(v.buf, v.len, code, (unsigned char *)PyBytes_AS_STRING(result));
            if (_PyBytes_Resize(&result, w) < 0)
                result = NULL;
        }
    }
    PyBuffer_Release(&v);
    return result;
}

static PyObject *mask_run(PyObject *self, PyObject *args) {
    Py_buffer buf, acts;
    PyObject *fns;
    Py_ssize_t start, stop, max_length, max_rows;
    unsigned char kind;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*nny*O!nnb", &buf, &start, &stop, &acts, &PyTuple_Type, &fns, &max_length,
                          &max_rows, &kind))
        return NULL;
    PyObject *result = NULL;
    out_t o = {NULL, 0, 0};
    Py_ssize_t ncols = acts.len;
    if (start < 0 || stop < start || stop > buf.len || max_rows < 0) {
        PyErr_SetString(PyExc_ValueError, "mask_run: start/stop outside the buffer");
        goto done;
    }
    if (PyTuple_GET_SIZE(fns) != ncols) {
        PyErr_SetString(PyExc_ValueError, "mask_run: one function per column");
        goto done;
    }
    if (check_codes(&acts, "mask_run") < 0)
        goto done;
    const unsigned char *b = (const unsigned char *)buf.buf;
    const unsigned char *rewrite = (const unsigned char *)acts.buf;
    Py_ssize_t pos = start, rows = 0, changed = 0, size = 0;
    while (rows < max_rows) {
        Py_ssize_t end = row_end(b, pos, stop, rewrite, ncols, max_length, kind, &size);
        if (end < 0)
            break;
        /* Room for the header; each value reserves its own below (a masked one may be longer). */
        if (out_reserve(&o, 7) < 0)
            goto done;
        Py_ssize_t head = o.len;
        memcpy(o.data + o.len, b + pos, 7); /* the kind, the length (patched below), the count */
        o.len += 7;
        Py_ssize_t p = pos + 7;
        for (Py_ssize_t i = 0; i < ncols; i++) {
            /* Checked again, not trusted from row_end: the functions called for the columns
               before this one run Python, which could have written into `buf` (a resize is
               refused while it is exported, a write in place is not). */
            if (end - p < 4)
                goto changed_under_us;
            uint32_t raw = be32(b + p);
            if (raw != 0xFFFFFFFFu && (raw > 0x7FFFFFFFu || (Py_ssize_t)raw > end - p - 4))
                goto changed_under_us;
            const unsigned char *value = b + p + 4;
            Py_ssize_t vlen = raw == 0xFFFFFFFFu ? 0 : (Py_ssize_t)raw;
            p += 4 + vlen;
            if (!rewrite[i] || raw == 0xFFFFFFFFu || (vlen == 0 && rewrite[i] != REWRITE_NULL &&
                                                      rewrite[i] != REWRITE_CALL)) {
                /* Not rewritten, NULL, or empty (a shape keeps an empty value). */
                if (out_reserve(&o, 4 + vlen) < 0)
                    goto done;
                memcpy(o.data + o.len, value - 4, (size_t)(4 + vlen));
                o.len += 4 + vlen;
                continue;
            }
            if (rewrite[i] == REWRITE_NULL) {
                if (out_reserve(&o, 4) < 0)
                    goto done;
                put32(o.data + o.len, 0xFFFFFFFFu);
                o.len += 4;
                changed++;
                continue;
            }
            if (rewrite[i] != REWRITE_CALL) {
                if (out_reserve(&o, 4 + vlen + SHAPE_GROWTH) < 0)
                    goto done;
                Py_ssize_t w = shape_whole(value, vlen, rewrite[i], (unsigned char *)o.data + o.len + 4);
                put32(o.data + o.len, (uint32_t)w);
                o.len += 4 + w;
                changed++;
                continue;
            }
            PyObject *v = PyBytes_FromStringAndSize((const char *)value, vlen);
            if (v == NULL)
                goto done;
            PyObject *r = PyObject_CallOneArg(PyTuple_GET_ITEM(fns, i), v);
            if (r == NULL) {
                Py_DECREF(v);
                goto done;
            }
            if (r == v) {
                Py_DECREF(r);
                Py_DECREF(v);
                if (out_reserve(&o, 4 + vlen) < 0)
                    goto done;
                memcpy(o.data + o.len, value - 4, (size_t)(4 + vlen));
                o.len += 4 + vlen;
                continue;
            }
            Py_DECREF(v);
            changed++;
            if (r == Py_None) {
                Py_DECREF(r);
                if (out_reserve(&o, 4) < 0)
                    goto done;
                put32(o.data + o.len, 0xFFFFFFFFu);
                o.len += 4;
                continue;
            }
            if (!PyBytes_Check(r)) {
                PyErr_Format(PyExc_TypeError, "mask_run: a column function returned %.50s, not bytes or None",
                             Py_TYPE(r)->tp_name);
                Py_DECREF(r);
                goto done;
            }
            Py_ssize_t rlen = PyBytes_GET_SIZE(r);
            if (rlen > 0x7FFFFFFF - 64 || out_reserve(&o, 4 + rlen) < 0) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_OverflowError, "mask_run: a masked value is too long");
                Py_DECREF(r);
                goto done;
            }
            put32(o.data + o.len, (uint32_t)rlen);
            memcpy(o.data + o.len + 4, PyBytes_AS_STRING(r), (size_t)rlen);
            o.len += 4 + rlen;
            Py_DECREF(r);
        }
        if (p != end)
            goto changed_under_us;
        if (finish_message(&o, head) < 0)
            goto done;
        pos = end;
        rows++;
    }
    result = run_result(&o, pos, rows, changed);
    goto done;
changed_under_us:
    PyErr_SetString(PyExc_BufferError, "mask_run: the buffer changed while a row was masked");
done:
    PyMem_Free(o.data);
    PyBuffer_Release(&buf);
    PyBuffer_Release(&acts);
    return result;
}


/* ---- COPY ... TO STDOUT, text format, tab-delimited: one line per CopyData ------------------

   join_text(buf, start, stop, null, scanned, max_length, max_rows) -> (joined, end, rows)
   mask_text_run(buf, start, stop, null, rewrite, fns, max_length, max_rows)
       -> (out, end, rows, changed)

   Walk CopyData messages ('d') whose payload is exactly one line (ending in the only '\n') of
   len(scanned) / len(rewrite) fields separated by tabs, a field being either exactly the NULL
   string `null` or text in which every backslash starts one of the escapes PostgreSQL's COPY
   writes: \b \f \n \r \t \v \\. Anything else (another escape, such as octal or hex, a line
   split across messages, another field count) stops the run and goes the per-row way.

   Why only those escapes: the raw field then holds every byte of its value that a content
   detector's gate looks at (letters, digits, '+/=.-_', spaces, rare bytes) verbatim and in
   the same runs, since an escape only stands for a control character or a backslash; so
   the gate run over raw fields opens whenever it would on the values. A backslash before any
   other character would split a run the value has ("ab\cd" is "abcd").

   join_text joins the raw scanned fields (NULLs left out), each followed by NUL.
   mask_text_run rewrites the `rewrite` fields: the value (escapes decoded) goes to fns[i];
   the same object back keeps the raw field, None writes the NULL string, bytes are written
   escaped as PostgreSQL escapes them. */

#define TEXT_MAX_FIELDS 1664 /* PostgreSQL's limit on a table's columns (MaxTupleAttributeNumber) */

static inline int text_escape_letter(unsigned char c) {
    return c == 'b' || c == 'f' || c == 'n' || c == 'r' || c == 't' || c == 'v' || c == '\\';
}

/* The end of the well-formed text-COPY line message at b[pos:stop], with each field's span in
   `spans` (start, end; start < 0 for NULL), or -1. */
static Py_ssize_t text_row_end(const unsigned char *b, Py_ssize_t pos, Py_ssize_t stop, const unsigned char *null,
                               Py_ssize_t null_len, Py_ssize_t ncols, Py_ssize_t max_length, Py_ssize_t *spans) {
    if (stop - pos < 6 || b[pos] != 'd')
        return -1;
    uint32_t length = be32(b + pos + 1);
    if (length < 5 || (Py_ssize_t)length > max_length || (Py_ssize_t)length > stop - pos - 1)
        return -1;
    Py_ssize_t end = pos + 1 + (Py_ssize_t)length;
    Py_ssize_t line_end = end - 1;
    if (b[line_end] != '\n')
        return -1;
    Py_ssize_t field = 0, field_start = pos + 5;
    /* Most lines hold no backslash (nothing escaped) and, being one line, no other '\n':
       their fields are found a tab at a time with memchr instead of a byte at a time. */
    Py_ssize_t text_len = line_end - field_start;
    int plain = memchr(b + field_start, '\\', (size_t)text_len) == NULL &&
                memchr(b + field_start, '\n', (size_t)text_len) == NULL;
    for (;;) {
        if (field >= ncols)
            return -1;
        /* One field: up to the next tab or the end of the line. */
        Py_ssize_t q = field_start;
        int clean = 1;
        if (plain) {
            const unsigned char *tab = memchr(b + q, '\t', (size_t)(line_end - q));
            q = tab == NULL ? line_end : tab - b;
        }
        while (q < line_end && b[q] != '\t') {
            unsigned char c = b[q];
            if (c == '\n')
                return -1; /* a second line in the message */
            if (c == '\\') {
                if (q + 1 >= line_end || !text_escape_letter(b[q + 1]))
                    clean = 0;
                q += 2;
                continue;
            }
            q++;
        }
        if (q > line_end)
            return -1; /* a backslash ending the line */
        Py_ssize_t flen = q - field_start;
        if (flen == null_len && memcmp(b + field_start, null, (size_t)null_len) == 0) {
            spans[2 * field] = -1;
        } else {
            if (!clean)
                return -1;
            spans[2 * field] = field_start;
        }
        spans[2 * field + 1] = q;
        field++;
        if (q == line_end)
            break;
        field_start = q + 1; /* past the tab */
    }
    return field == ncols ? end : -1;
}

/* The arguments both text functions take, checked; room for one line's field spans (to be
   freed with PyMem_Free), or NULL with an exception set. */
static Py_ssize_t *text_spans(Py_buffer *buf, Py_ssize_t start, Py_ssize_t stop, Py_ssize_t ncols,
                              Py_ssize_t max_rows) {
    if (start < 0 || stop < start || stop > buf->len || max_rows < 0) {
        PyErr_SetString(PyExc_ValueError, "start/stop outside the buffer");
        return NULL;
    }
    if (ncols < 1 || ncols > TEXT_MAX_FIELDS) {
        PyErr_SetString(PyExc_ValueError, "a text COPY row has 1 to 1664 fields");
        return NULL;
    }
    Py_ssize_t *spans = PyMem_Malloc(sizeof(Py_ssize_t) * 2 * (size_t)ncols);
    if (spans == NULL)
        PyErr_NoMemory();
    return spans;
}

static PyObject *join_text(PyObject *self, PyObject *args) {
    Py_buffer buf, nul, cols;
    Py_ssize_t start, stop, max_length, max_rows;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*nny*y*nn", &buf, &start, &stop, &nul, &cols, &max_length, &max_rows))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t *spans = NULL;
    Py_ssize_t ncols = cols.len;
    spans = text_spans(&buf, start, stop, ncols, max_rows);
    if (spans == NULL)
        goto done;
    const unsigned char *b = (const unsigned char *)buf.buf;
    const unsigned char *scanned = (const unsigned char *)cols.buf;
    out_t o = {NULL, 0, 0};
    Py_ssize_t pos = start, rows = 0;
    while (rows < max_rows) {
        Py_ssize_t end = text_row_end(b, pos, stop, nul.buf, nul.len, ncols, max_length, spans);
        if (end < 0)
            break;
        for (Py_ssize_t i = 0; i < ncols; i++) {
            if (!scanned[i] || spans[2 * i] < 0)
                continue;
            Py_ssize_t len = spans[2 * i + 1] - spans[2 * i];
            if (out_reserve(&o, len + 1) < 0) {
                PyMem_Free(o.data);
                goto done;
            }
            memcpy(o.data + o.len, b + spans[2 * i], (size_t)len);
            o.len += len;
            o.data[o.len++] = '\0';
        }
        pos = end;
        rows++;
    }
    PyObject *joined = PyBytes_FromStringAndSize(o.data ? o.data : "", o.len);
    PyMem_Free(o.data);
    if (joined != NULL)
        result = Py_BuildValue("(Nnn)", joined, pos, rows);
done:
    PyMem_Free(spans);
    PyBuffer_Release(&buf);
    PyBuffer_Release(&nul);
    PyBuffer_Release(&cols);
    return result;
}

/* The escape PostgreSQL's COPY TO writes for `c` in a tab-delimited text field, or 0. */
static inline char text_escape(unsigned char c) {
    switch (c) {
    case '\b': return 'b';
    case '\f': return 'f';
    case '\n': return 'n';
    case '\r': return 'r';
    case '\t': return 't';
    case '\v': return 'v';
    case '\\': return '\\';
    default: return 0;
    }
}

static inline unsigned char text_unescape(unsigned char letter) {
    switch (letter) {
    case 'b': return '\b';
    case 'f': return '\f';
    case 'n': return '\n';
    case 'r': return '\r';
    case 't': return '\t';
    case 'v': return '\v';
    default: return letter; /* '\\' */
    }
}

/* v[0:n] escaped at the end of o, which has room for 2 * n more bytes. */
static void escape_into(out_t *o, const unsigned char *v, Py_ssize_t n) {
    for (Py_ssize_t j = 0; j < n; j++) {
        char e = text_escape(v[j]);
        if (e) {
            o->data[o->len++] = '\\';
            o->data[o->len++] = e;
        } else {
            o->data[o->len++] = (char)v[j];
        }
    }
}

static PyObject *mask_text_run(PyObject *self, PyObject *args) {
    Py_buffer buf, nul, acts;
    PyObject *fns;
    Py_ssize_t start, stop, max_length, max_rows;
    (void)self;
    if (!PyArg_ParseTuple(args, "y*nny*y*O!nn", &buf, &start, &stop, &nul, &acts, &PyTuple_Type, &fns, &max_length,
                          &max_rows))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t *spans = NULL;
    out_t o = {NULL, 0, 0};
    out_t copy = {NULL, 0, 0}; /* the current line, reused from line to line */
    out_t scratch = {NULL, 0, 0}; /* a value and its shape, reused from value to value */
    Py_ssize_t ncols = acts.len;
    if (PyTuple_GET_SIZE(fns) != ncols) {
        PyErr_SetString(PyExc_ValueError, "mask_text_run: one function per column");
        goto done;
    }
    if (check_codes(&acts, "mask_text_run") < 0)
        goto done;
    spans = text_spans(&buf, start, stop, ncols, max_rows);
    if (spans == NULL)
        goto done;
    const unsigned char *b = (const unsigned char *)buf.buf;
    const unsigned char *rewrite = (const unsigned char *)acts.buf;
    Py_ssize_t pos = start, rows = 0, changed = 0;
    while (rows < max_rows) {
        Py_ssize_t end = text_row_end(b, pos, stop, nul.buf, nul.len, ncols, max_length, spans);
        if (end < 0)
            break;
        /* Each field's value is taken from `row`, a copy made before any call into Python,
           so nothing a masking function does to `buf` can change what is read. One buffer
           serves every line of the run. */
        copy.len = 0;
        if (out_reserve(&copy, end - pos) < 0 || out_reserve(&o, 5) < 0)
            goto done;
        const unsigned char *row = (const unsigned char *)copy.data;
        memcpy(copy.data, b + pos, (size_t)(end - pos));
        Py_ssize_t head = o.len;
        o.data[o.len++] = 'd';
        o.len += 4; /* the length, patched below */
        for (Py_ssize_t i = 0; i < ncols; i++) {
            Py_ssize_t fs = spans[2 * i], fe = spans[2 * i + 1];
            int null_field = fs < 0;
            if (null_field)
                fs = fe - nul.len;
            const unsigned char *raw = row + (fs - pos);
            Py_ssize_t raw_len = fe - fs;
            const unsigned char *keep = raw; /* what goes out: the raw field unless rewritten */
            Py_ssize_t keep_len = raw_len;
            PyObject *r = NULL;
            if (rewrite[i] == REWRITE_NULL && !null_field) {
                changed++;
                keep = nul.buf;
                keep_len = nul.len;
            } else if (rewrite[i] > REWRITE_CALL && !null_field && raw_len > 0) {
                /* A shape: the value (escapes decoded) at scratch[0:n], its shape after it. */
                scratch.len = 0;
                if (out_reserve(&scratch, 2 * raw_len + SHAPE_GROWTH) < 0)
                    goto done;
                unsigned char *w = (unsigned char *)scratch.data;
                Py_ssize_t n = 0;
                for (Py_ssize_t j = 0; j < raw_len; j++)
                    w[n++] = raw[j] == '\\' ? text_unescape(raw[++j]) : raw[j];
                Py_ssize_t shaped = shape_whole(w, n, rewrite[i], w + n);
                if (out_reserve(&o, 1 + shaped) < 0)
                    goto done;
                if (i)
                    o.data[o.len++] = '\t';
                /* No shape holds a byte COPY escapes (a control character or a backslash):
                   the test holding this to the Python reference, which escapes, would see it. */
                memcpy(o.data + o.len, w + n, (size_t)shaped);
                o.len += shaped;
                changed++;
                continue;
            } else if (rewrite[i] == REWRITE_CALL && !null_field) {
                /* The value: escapes decoded (text_row_end let only \b \f \n \r \t \v \\ by). */
                PyObject *v = PyBytes_FromStringAndSize(NULL, raw_len);
                if (v == NULL)
                    goto done;
                char *w = PyBytes_AS_STRING(v);
                Py_ssize_t n = 0;
                for (Py_ssize_t j = 0; j < raw_len; j++) {
                    if (raw[j] == '\\') {
                        w[n++] = (char)text_unescape(raw[++j]);
                    } else {
                        w[n++] = (char)raw[j];
                    }
                }
                if (n != raw_len && _PyBytes_Resize(&v, n) < 0)
                    goto done;
                r = PyObject_CallOneArg(PyTuple_GET_ITEM(fns, i), v);
                if (r == NULL) {
                    Py_DECREF(v);
                    goto done;
                }
                if (r == v) {
                    Py_CLEAR(r);
                } else if (r == Py_None) {
                    changed++;
                    keep = nul.buf;
                    keep_len = nul.len;
                } else if (!PyBytes_Check(r)) {
                    PyErr_Format(PyExc_TypeError,
                                 "mask_text_run: a column function returned %.50s, not bytes or None",
                                 Py_TYPE(r)->tp_name);
                    Py_DECREF(r);
                    Py_DECREF(v);
                    goto done;
                } else {
                    changed++;
                }
                Py_DECREF(v);
            }
            Py_ssize_t need = (i ? 1 : 0) + (r != NULL && r != Py_None ? 2 * PyBytes_GET_SIZE(r) : keep_len);
            if (out_reserve(&o, need) < 0) {
                Py_XDECREF(r);
                goto done;
            }
            if (i)
                o.data[o.len++] = '\t';
            if (r != NULL && r != Py_None) {
                escape_into(&o, (const unsigned char *)PyBytes_AS_STRING(r), PyBytes_GET_SIZE(r));
            } else {
                memcpy(o.data + o.len, keep, (size_t)keep_len);
                o.len += keep_len;
            }
            Py_XDECREF(r);
        }
        if (out_reserve(&o, 1) < 0)
            goto done;
        o.data[o.len++] = '\n';
        if (finish_message(&o, head) < 0)
            goto done;
        pos = end;
        rows++;
    }
    result = run_result(&o, pos, rows, changed);
done:
    PyMem_Free(o.data);
    PyMem_Free(copy.data);
    PyMem_Free(scratch.data);
    PyMem_Free(spans);
    PyBuffer_Release(&buf);
    PyBuffer_Release(&nul);
    PyBuffer_Release(&acts);
    return result;
}

static PyMethodDef methods[] = {
    {"join_scanned", join_scanned, METH_VARARGS,
     "join_scanned(buf, start, stop, scanned, max_length, max_rows, kind) -> (joined, end, rows)"},
    {"mask_run", mask_run, METH_VARARGS,
     "mask_run(buf, start, stop, rewrite, fns, max_length, max_rows, kind) -> (out, end, rows, changed)"},
    {"join_text", join_text, METH_VARARGS,
     "join_text(buf, start, stop, null, scanned, max_length, max_rows) -> (joined, end, rows)"},
    {"mask_text_run", mask_text_run, METH_VARARGS,
     "mask_text_run(buf, start, stop, null, rewrite, fns, max_length, max_rows) -> (out, end, rows, changed)"},
    {"mask_whole", mask_whole, METH_VARARGS,
     "mask_whole(value, code) -> bytes | None: one value as mask_run treats a column of that rewrite code"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "proxy.protocol._rowrun", "Runs of DataRows, walked in C (see proxy/protocol/rowrun.py).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__rowrun(void) { return PyModule_Create(&module); }
