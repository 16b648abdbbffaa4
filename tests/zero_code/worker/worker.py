"""The worker: last hop of the zero-code chain. Flask only, no OpenTelemetry.

GET /work          200 "worked"
GET /work?slow=MS  sleeps MS milliseconds first
GET /work?fail=1   raises, so Flask answers 500
Listens on 127.0.0.1:$PORT and prints "READY <port>" once it does.
"""

import os
import sys
import time

from flask import Flask, request
from werkzeug.serving import make_server

app = Flask(__name__)


@app.get("/work")
def work():
    slow = int(request.args.get("slow", "0"))
    if slow > 0:
        time.sleep(slow / 1000)
    if request.args.get("fail") == "1":
        raise RuntimeError("worker failed as asked (fail=1)")
    return "worked\n"


def main():
    port = int(os.environ["PORT"])
    server = make_server("127.0.0.1", port, app, threaded=True)
    print(f"READY {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
