#!/usr/bin/env python3
"""A webhook receiver for mailspool's tests, written by nobody here: every
request is verified with the Standard Webhooks reference library
(`standardwebhooks`, PyPI), not with mailspool's own signer. Each verified
event is appended to DIR/events.jsonl as one JSON line
{"webhook_id", "type", "sequence", "id", "recipient"}; a request that does
not verify is answered 400 and counted in DIR/invalid (one line each).

Behaviour is steered by files in DIR, read at each request:
  DIR/status  an HTTP status to answer instead of 204 (e.g. 503)
  DIR/delay   seconds to wait before answering (a slow endpoint)
Prints the port it listens on, then serves until killed.

    python3 webhook_receiver.py --dir DIR --secret-file FILE [--port N]
"""
import argparse
import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook

ap = argparse.ArgumentParser()
ap.add_argument("--dir", required=True)
ap.add_argument("--secret-file", required=True)
ap.add_argument("--port", type=int, default=0)
args = ap.parse_args()
hook = Webhook(open(args.secret_file).read().strip())


def read(name, default=None):
    try:
        with open(os.path.join(args.dir, name)) as f:
            return f.read().strip()
    except FileNotFoundError:
        return default


def append(name, line):
    with open(os.path.join(args.dir, name), "a") as f:
        f.write(line + "\n")
        f.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        delay = float(read("delay", "0") or 0)
        if delay:
            time.sleep(delay)
        status = int(read("status", "204") or 204)
        if status < 300:
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                event = hook.verify(body, headers)
            except Exception as e:  # WebhookVerificationError and friends
                append("invalid", f"{type(e).__name__}: {e}")
                status = 400
            else:
                data = event["data"]
                append("events.jsonl", json.dumps({
                    "webhook_id": headers["webhook-id"],
                    "type": event["type"],
                    "timestamp": event["timestamp"],
                    "sequence": data["sequence"],
                    "id": data["id"],
                    "recipient": data.get("recipient"),
                }))
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *a):
        pass


server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
