"""What the routes do, apart from HTTP: keys, jobs, progress, results, estimates."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
import uuid
from itertools import count
from typing import Any

import kernel
from kernel_jobs.config import JobsConfig
from kernel_jobs.endpoints import Endpoint
from kernel_jobs.store import CLIENT_LIMIT, DISABLED, DONE, LAPSED, PROCESSING, STORE_FULL, Job, Store
from kernel_jobs.validation import validate

log = logging.getLogger("kernel.jobs")

#: Worker fields kept with a worker's state for `/api/endpoints/<name>`.
WORKER_FIELDS = ("gpu_name", "num_gpus", "max_job_batch", "worker_version", "framework",
                 "framework_version", "model_label", "model_size", "model_family", "model_type")
#: Fields of a worker's result that are the protocol's, not the job's outputs.
RESULT_PROTOCOL_FIELDS = frozenset({"auth_key", "job_type", "job_id", "version"})
STATISTICS = ("start_time", "start_time_compute", "result_received_time", "total_duration", "compute_duration")
#: Default of the worker interface's own HTTP timeout, when a request does not say.
WORKER_REQUEST_TIMEOUT = 60.0


class ClientError(Exception):
    """A client request refused with AIME's status code and message (or list of messages)."""

    def __init__(self, status: int, error: str | list[str]) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


class WorkerRefused(Exception):
    """A worker request answered with `{"cmd": <cmd>, "msg": ...}`."""

    def __init__(self, cmd: str, msg: str) -> None:
        super().__init__(msg)
        self.cmd = cmd
        self.msg = msg


def _anonymous_owner(key: str) -> str:
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]


class JobService:
    def __init__(self, kernel_: kernel.Kernel, config: JobsConfig, endpoints: dict[str, Endpoint],
                 store: Store) -> None:
        self.kernel = kernel_
        self.config = config
        self.endpoints = endpoints
        self.store = store
        self.by_type: dict[str, list[Endpoint]] = {}
        for endpoint in endpoints.values():
            self.by_type.setdefault(endpoint.job_type, []).append(endpoint)
        self._counter = count(1)

    # -- clients ---------------------------------------------------------------------------

    def login(self, endpoint: Endpoint, key: str | None, user: str | None) -> dict[str, Any]:
        if endpoint.client_keys:
            owner = self._key_owner(endpoint, key)
        else:
            owner = _anonymous_owner(key) if key else (user or "anonymous")
        token = self.kernel.auth.tokens.issue(owner, [f"jobs:client:{endpoint.name}"], self.config.session_ttl,
                                              issuer="jobs")
        return {"success": True, "ep_version": endpoint.version, "client_session_auth_key": token, "key": key}

    def _key_owner(self, endpoint: Endpoint, key: str | None) -> str:
        for name, known in endpoint.client_keys.items():
            if key and hmac.compare_digest(known.encode(), key.encode()):
                return name
        if key and any(key in ep.client_keys.values() for ep in self.endpoints.values()):
            raise ClientError(402, f"Client not authorized for endpoint {endpoint.name}!")
        raise ClientError(401, "API key not valid")

    def owner(self, endpoint: Endpoint, args: dict[str, Any]) -> str:
        """Who sends a request: by its API key, or by the session key a login gave out."""
        key, session = args.get("key"), args.get("client_session_auth_key")
        if key is not None and not isinstance(key, str) or session is not None and not isinstance(session, str):
            raise ClientError(401, "key and client_session_auth_key must be strings")
        if key:
            return self._key_owner(endpoint, key) if endpoint.client_keys else _anonymous_owner(key)
        if session:
            try:
                principal = self.kernel.auth.tokens.verify(session)
            except kernel.Unauthorized:
                principal = None
            if principal is not None and principal.allows(f"jobs:client:{endpoint.name}"):
                return principal.subject
        raise ClientError(401, "API Key missing and client session authentication key not registered in API Server")

    async def submit(self, endpoint: Endpoint, args: dict[str, Any], from_query: bool = False) -> Job:
        """Queue a job for `args`, a request's JSON body or (`from_query`) its query string."""
        owner = self.owner(endpoint, args)
        data, errors = validate(endpoint.inputs, args, from_query)
        if errors:
            raise ClientError(400, errors)
        for name, spec in endpoint.session_vars.items():
            if spec.get("default") is not None:
                data.setdefault(name, spec["default"])
        now = time.time()
        job_id = f"{uuid.uuid4()}#{next(self._counter)}"
        wait = args.get("wait_for_result", True)
        if isinstance(wait, str):  # a GET request's query string
            wait = wait.strip().lower() not in ("false", "0", "no", "")
        job: Job = {
            "id": job_id, "endpoint": endpoint.name, "job_type": endpoint.job_type, "owner": owner,
            "data": data, "wait_for_result": bool(wait), "start_time": now, "last_update": now,
            "queued_since": now, "inactivity_timeout": endpoint.job_inactivity_timeout,
            "max_time_in_queue": endpoint.max_time_in_queue, "result_lifetime": endpoint.result_lifetime,
            "progress": {"progress": 0, "progress_data": {}},
        }
        refused = await self.store.submit(job, endpoint.max_queue_length, endpoint.client_request_limit)
        if refused == DISABLED:
            raise ClientError(400, "Endpoint disabled!")
        if refused == STORE_FULL:
            raise kernel.Unavailable("the job store is full (--jobs-max-bytes, or 90% of Redis's maxmemory, of jobs and "
                                     "results waiting to be collected); try again later")
        if refused == CLIENT_LIMIT:
            limit = endpoint.client_request_limit
            raise ClientError(402, f"Client has too much requests. Only {limit} requests per client allowed.")
        if refused is not None:
            raise ClientError(400, f"Job queue reached max length {endpoint.max_queue_length}!")
        return job

    async def own_job(self, endpoint: Endpoint, args: dict[str, Any]) -> Job:
        owner = self.owner(endpoint, args)
        job_id = args.get("job_id")
        if not job_id or not isinstance(job_id, str):
            raise ClientError(402, "No job_id given")
        job = await self.store.job(job_id)
        # Someone else's job looks exactly like an unknown one: ids are not disclosed.
        if job is None or job["owner"] != owner or job["endpoint"] != endpoint.name:
            raise ClientError(402, f"Client has no active request with this job id {job_id}")
        return job

    async def progress(self, endpoint: Endpoint, job: Job) -> dict[str, Any]:
        answer: dict[str, Any] = {"success": True, "job_id": job["id"], "ep_version": endpoint.version}
        if job["state"] == DONE:
            claimed = await self.store.claim(job["id"])
            if claimed is None:
                raise ClientError(402, f"Client has no active request with this job id {job['id']}")
            answer.update(job_state=DONE, job_result=self.final(endpoint, claimed))
            return answer
        if job["state"] == LAPSED:
            raise ClientError(400, f"Job {job['id']} on {endpoint.name} lapsed!")
        progress = job.get("progress") or {}
        data = progress.get("progress_data") or {}
        online = await self.workers_online(endpoint)
        answer.update(job_state=job["state"], progress={
            "progress": progress.get("progress") or 0,
            "progress_data": {k: v for k, v in data.items() if k in endpoint.progress_outputs}
            if isinstance(data, dict) else {},
            "queue_position": await self.store.position(job),
            "estimate": await self.estimate(endpoint, job, online),
            "num_workers_online": online,
        })
        return answer

    async def wait_for_result(self, endpoint: Endpoint, job_id: str, gone: asyncio.Event) -> dict[str, Any] | None:
        """The final answer for a job, once; None when the client hung up first."""
        while not gone.is_set():
            job = await self.store.job(job_id)
            if job is None:
                raise ClientError(402, f"Client has no active request with this job id {job_id}")
            if job["state"] == DONE:
                claimed = await self.store.claim(job_id)
                if claimed is None:
                    raise ClientError(402, f"Client has no active request with this job id {job_id}")
                return self.final(endpoint, claimed)
            if job["state"] == LAPSED:
                raise ClientError(400, f"Job {job_id} on {endpoint.name} lapsed!")
            await self.store.wait_done(job_id, 1.0)
        return None

    def final(self, endpoint: Endpoint, job: Job) -> dict[str, Any]:
        result = job.get("result") or {}
        answer: dict[str, Any] = {"success": True, "job_id": job["id"], "ep_version": endpoint.version}
        # `error` is how AIME workers (and the kernel's own) report a failed job.
        answer.update({k: result[k] for k in (*endpoint.outputs, "error") if k in result})
        if endpoint.provide_worker_meta_data:
            answer.update({k: result[k] for k in ("auth", "worker_interface_version") if k in result})
        received = job.get("result_received_time") or time.time()
        compute_start = job.get("start_time_compute") or job["start_time"]
        answer.update(start_time=job["start_time"], start_time_compute=compute_start,
                      result_received_time=received, total_duration=round(received - job["start_time"], 4),
                      compute_duration=round(received - compute_start, 4))
        return answer

    async def workers_online(self, endpoint: Endpoint) -> int:
        if endpoint.model:
            return 1
        now = time.time()
        workers = await self.store.workers(endpoint.job_type)
        return sum(now - w.get("last_seen", 0) < self.config.worker_offline_after for w in workers.values())

    async def estimate(self, endpoint: Endpoint, job: Job, online: int) -> float:
        """Seconds until the job is done, from the job type's mean duration; -1 unknown."""
        mean = await self.store.mean_duration(endpoint.job_type)
        if mean is None or not online:
            return -1
        now = time.time()
        if job["state"] == PROCESSING:
            return round(max(0.0, mean - (now - job["start_time_compute"])), 2)
        ahead = await self.store.position(job)
        return round(max(0.0, mean * (ahead + 1) / online), 2)

    # -- workers ---------------------------------------------------------------------------

    def check_worker(self, args: Any) -> str:
        """The job type a worker request may use; WorkerRefused otherwise."""
        if not isinstance(args, dict):
            raise WorkerRefused("error", "request body must be a JSON object")
        job_type, key = args.get("job_type"), args.get("auth_key")
        if not isinstance(job_type, str) or job_type not in self.by_type or job_type.startswith("model:"):
            raise WorkerRefused("error", f"Unknown job_type: {job_type}")
        if not isinstance(key, str) or not self._worker_key_ok(job_type, key):
            raise WorkerRefused("error", f"Worker {args.get('auth')} not authorized on job type {job_type}")
        return job_type

    def _worker_key_ok(self, job_type: str, key: str) -> bool:
        for endpoint in self.by_type[job_type]:
            if endpoint.worker_auth_key and hmac.compare_digest(endpoint.worker_auth_key.encode(), key.encode()):
                return True
        # A kernel token with the scope `jobs:worker:<job_type>` works as well.
        if key.count(".") == 2:
            try:
                return self.kernel.auth.tokens.verify(key).allows(f"jobs:worker:{job_type}")
            except kernel.Unauthorized:
                return False
        return False

    async def status(self, args: Any) -> dict[str, Any]:
        """The worker's check; `kernel.Unavailable` (a 503) while the store cannot be reached,
        as the worker interface polls here until it gets a 200 before asking for jobs again."""
        args = args if isinstance(args, dict) else {}
        job_type = args.get("job_type")
        present = isinstance(job_type, str) and job_type in self.by_type and not job_type.startswith("model:")
        key = args.get("auth_key")
        valid = present and isinstance(key, str) and self._worker_key_ok(job_type, key)
        if valid:
            await self.store.ping()
        return {"cmd": "ok" if valid else "error", "job_type_present": present, "key_valid": valid,
                **({} if valid else {"msg": "unknown job_type or invalid auth_key"})}

    async def note_worker(self, job_type: str, args: dict[str, Any], state: str) -> None:
        name = str(args.get("auth") or "unknown")
        info = {"state": state, "last_seen": time.time(), **{k: args.get(k) for k in WORKER_FIELDS if k in args}}
        await self.store.seen_worker(job_type, name, info)

    def long_poll_seconds(self, job_type: str, args: dict[str, Any]) -> float:
        """How long a job request may wait: never as long as the worker's own timeout."""
        theirs = args.get("request_timeout")
        if isinstance(theirs, bool) or not isinstance(theirs, (int, float)) or theirs <= 0:
            theirs = WORKER_REQUEST_TIMEOUT
        limits = [self.config.job_request_timeout, 0.9 * theirs]
        limits += [ep.request_timeout for ep in self.by_type[job_type] if ep.request_timeout]
        return min(limits)

    async def job_request(self, args: dict[str, Any], gone: asyncio.Event) -> dict[str, Any]:
        job_type = self.check_worker(args)
        worker = str(args.get("auth") or "unknown")
        await self.note_worker(job_type, args, "waiting")
        job = await self.store.take(job_type, worker, self.long_poll_seconds(job_type, args), gone)
        if job is None:
            return {"cmd": "no_job"}
        batch = [job]
        size = args.get("max_job_batch", 1)
        size = size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else 1
        while len(batch) < size:
            more = await self.store.take(job_type, worker, 0, gone)
            if more is None:
                break
            batch.append(more)
        await self.note_worker(job_type, args, "processing")
        return self.job_command(batch)

    def job_command(self, batch: list[Job]) -> dict[str, Any]:
        endpoint = self.endpoints[batch[0]["endpoint"]]
        # No `wait_for_result`, as the original sends none: AIME's worker stops reporting
        # progress for a job that has it true, and a silent job is requeued and run twice.
        return {
            "cmd": "job", "endpoint_name": endpoint.name,
            "input_descriptions": endpoint.inputs,
            "progress_output_descriptions": endpoint.progress_outputs,
            "final_output_descriptions": endpoint.outputs,
            "job_data": [{**job["data"], "job_id": job["id"], "start_time": job["start_time"],
                          "start_time_compute": job["start_time_compute"]} for job in batch],
        }

    async def job_progress(self, items: Any) -> list[dict[str, Any]] | dict[str, Any]:
        """One answer per report, in the original's shape (`success`, `error_msg`) and, as there,
        naming no job: the worker interface looks up every job an answer names, and one it has
        just finished (its last report goes right before the result) raises there, after
        which it silently sends no progress again."""
        items = items if isinstance(items, list) else [items]
        answers = []
        for item in items:
            try:
                job_type = self.check_worker(item)
            except WorkerRefused as refused:
                return {"success": False, "error_msg": refused.msg}
            job_id = item.get("job_id")
            job = await self.store.job(job_id) if isinstance(job_id, str) else None
            ok = job is not None and job["job_type"] == job_type and await self.store.progress(
                job_id, item.get("progress"), item.get("progress_data") or {})
            answers.append({"success": True} if ok else
                           {"success": False, "error_msg": f"No processing job with job id {job_id}"})
        return answers

    async def job_result(self, args: Any) -> dict[str, Any]:
        job_type = self.check_worker(args)
        job_id = args.get("job_id")
        job = await self.store.job(job_id) if isinstance(job_id, str) else None
        if job is None or job["job_type"] != job_type:
            return {"cmd": "warning", "msg": f"Job with job id {job_id} not found!"}
        result = {k: v for k, v in args.items() if k not in RESULT_PROTOCOL_FIELDS}
        if "version" in args:
            result["worker_interface_version"] = args["version"]
        finished = await self.store.finish(job_id, result)
        if finished is None:
            return {"cmd": "warning", "msg": f"Job with job id {job_id} has already finished!"}
        started = finished.get("start_time_compute")
        if started:
            await self.store.record_duration(job_type, finished["result_received_time"] - started)
        await self.note_worker(job_type, args, "waiting")
        return {"cmd": "ok"}

    async def describe(self, endpoint: Endpoint) -> dict[str, Any]:
        workers = await self.store.workers(endpoint.job_type)
        now = time.time()
        listed = [{"name": name, **{k: v for k, v in info.items() if k != "last_seen"},
                   "state": info.get("state") if now - info.get("last_seen", 0) < self.config.worker_offline_after
                   else "offline"} for name, info in workers.items()]
        return {**endpoint.describe(), "enabled": await self.store.enabled(endpoint.name),
                "num_workers": len(listed),
                "num_active_workers": sum(w["state"] != "offline" for w in listed), "workers": listed}

