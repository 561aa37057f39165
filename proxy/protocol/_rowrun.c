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
   most `max_length`: that message is left to the per-row path, which raises the error PostgreSQL's
   framing or the masker would. They never read outside buf[start:stop].

   join_scanned returns the values of the columns whose byte in `scanned` is non-zero, each
   followed by a NUL byte (NULLs left out), the offset just past the last row taken, and how
   many rows were taken.

   mask_run returns the rows taken, rewritten: the value of a column whose byte in `rewrite` is
   non-zero becomes fns[i](value) (bytes; None for NULL; the very same object for "unchanged"),
   a NULL stays NULL, every other value is copied. `changed` counts the values for which fns[i]
   returned another object than its argument. An exception raised by fns[i] propagates. */

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
            if (!rewrite[i] || raw == 0xFFFFFFFFu) {
                if (out_reserve(&o, 4 + vlen) < 0)
                    goto done;
                memcpy(o.data + o.len, value - 4, (size_t)(4 + vlen));
                o.len += 4 + vlen;
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
        Py_ssize_t length = o.len - head - 1;
        if (length > 0x7FFFFFFF) {
            PyErr_SetString(PyExc_OverflowError, "mask_run: a masked row is too long");
            goto done;
        }
        put32(o.data + head + 1, (uint32_t)length);
        pos = end;
        rows++;
    }
    {
        PyObject *out = PyBytes_FromStringAndSize(o.data ? o.data : "", o.len);
        if (out != NULL)
            result = Py_BuildValue("(Nnnn)", out, pos, rows, changed);
    }
    goto done;
changed_under_us:
    PyErr_SetString(PyExc_BufferError, "mask_run: the buffer changed while a row was masked");
done:
    PyMem_Free(o.data);
    PyBuffer_Release(&buf);
    PyBuffer_Release(&acts);
    return result;
}

static PyMethodDef methods[] = {
    {"join_scanned", join_scanned, METH_VARARGS,
     "join_scanned(buf, start, stop, scanned, max_length, max_rows, kind) -> (joined, end, rows)"},
    {"mask_run", mask_run, METH_VARARGS,
     "mask_run(buf, start, stop, rewrite, fns, max_length, max_rows, kind) -> (out, end, rows, changed)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "proxy.protocol._rowrun", "Runs of DataRows, walked in C (see proxy/protocol/rowrun.py).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__rowrun(void) { return PyModule_Create(&module); }
