"""Scale-out on PostgreSQL: planning enqueues send batches, procrastinate workers send them.

With ``NEWSLETTER_DISPATCH=procrastinate`` (PostgreSQL only; ``app.check_dispatch``) the daemon's tick
and ``newsletter digest`` plan as always and, in the same transaction, enqueue the deliveries they
recorded as ``send_batch`` jobs (``enqueue``), and its ingest runs enqueue an ``ingest_source`` job
per source; ``newsletter worker`` processes (``worker``) run them with the same "send a batch" code
as the embedded default (``batch`` → ``deliver.send_due``), the ledger's claims and leases keeping
every delivery to one sender. One relay's rate limit holds across all workers (``ratelimit``).
``status.queue_status`` is the queue section of ``newsletter status``.

=============  =============================================================================
module         what
=============  =============================================================================
app.py         the procrastinate App, its connection (schema ``scale``), queue names, the check
tasks.py       the jobs: ``send_batch`` (queue per relay), ``ingest_source`` (a lock per source)
batch.py       one send batch: send_due on its deliveries, and the follow-up for what is left
enqueue.py     jobs written in the caller's transaction (procrastinate's SQL function)
schema.py      the queue's schema, applied if missing (the scale extra installed after ``newsletter init``)
ratelimit.py   the relay's token bucket in PostgreSQL, shared by every worker
worker.py      ``run_worker``: the worker process
status.py      ``queue_status``: jobs per queue, workers seen in the last minute
=============  =============================================================================

Needs the ``scale`` extra (procrastinate).
"""
