"""A batch worker on the real AIME worker interface, run in the clients' environment.

Usage: python aime_batch_worker.py SERVER JOB_TYPE AUTH_KEY MAX_BATCH
Asks for up to MAX_BATCH jobs at a time, prints each batch's size, and answers every job
of the batch with its `text` upper-cased.
"""

import sys

from aime_api_worker_interface import APIWorkerInterface


def main() -> None:
    server, job_type, key, max_batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    worker = APIWorkerInterface(server, job_type, key, request_timeout=5, print_server_status=False)
    while True:
        batch = worker.job_batch_request(max_batch)
        print(f"batch {len(batch)}", flush=True)
        for job in batch:
            worker.send_job_results({"text": job["text"].upper(), "steps": job["steps"]}, job_id=job["job_id"])


if __name__ == "__main__":
    main()
