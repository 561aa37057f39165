"""Cross-cutting checks on requests from Slack, as bolt middleware (`async_process(req, resp, next)`).

    replay.py   SignedOnce: a signed request is accepted once (replay cache: Redis or in-process)
"""
