"""A worker built on the real AIME worker interface, run in the clients' environment.

Usage: python aime_worker.py SERVER JOB_TYPE AUTH_KEY STEP_SECONDS
Echoes `text` (upper- or lower-cased by `mode`) after `steps` progress reports, each after
STEP_SECONDS of work; the last goes right before the result, as a model's last step does, so
the interface gets its answer after it has dropped the job.
"""

import sys
import time

from aime_api_worker_interface import APIWorkerInterface


def main() -> None:
    server, job_type, key, step_seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    worker = APIWorkerInterface(server, job_type, key, request_timeout=5, print_server_status=False)
    while True:
        job = worker.job_request()
        text = job["text"].upper() if job.get("mode") == "upper" else job["text"].lower()
        for step in range(job["steps"]):
            time.sleep(step_seconds)
            worker.send_progress(int(100 * step / job["steps"]), {"partial": text[: step + 1], "secret": "x"})
        worker.send_job_results({"text": text, "steps": job["steps"]})
        print(f"done {job['job_id']}", flush=True)


if __name__ == "__main__":
    main()
