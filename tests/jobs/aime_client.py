"""Jobs submitted through the real AIME client interface; prints what it saw as JSON.

Usage: python aime_client.py SERVER KEY TEXT...
The first text waits for its result; the others report progress while they run.
"""

import json
import sys

from aime_api_client_interface import ModelAPI


def main() -> None:
    server, key, texts = sys.argv[1], sys.argv[2], sys.argv[3:]
    api = ModelAPI(server, "echo", "alice", key)
    session_key = api.do_api_login()
    seen = {"session_key": bool(session_key), "results": [], "progress": []}
    seen["results"].append(api.do_api_request({"text": texts[0], "steps": 2}))
    for text in texts[1:]:
        updates: list = []
        result = api.do_api_request(
            {"text": text, "steps": 3, "mode": "lower"},
            progress_callback=lambda info, data, seen_here=updates: seen_here.append([info, data]),
        )
        seen["results"].append(result)
        seen["progress"].append(updates)
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
