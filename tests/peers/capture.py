#!/usr/bin/env python3
"""A relay for mailspool's tests, written by nobody here: aiosmtpd takes
every message, and Python's email package reads it the way a strict
receiver would. For message N it writes N.eml (the bytes received) and
N.json (envelope, MAIL FROM parameters, the strict parser's verdict, every
part with its defects) into --dir, the .json last and atomically. Prints
the port it listens on, then serves until killed.

    python3 capture.py --dir DIR [--smtputf8]
        [--reject LOCAL]... [--defer-once LOCAL]... [--max-rcpts N]
    python3 capture.py --parse FILE...   (smtp-sink dumps: one JSON line each)
"""
import argparse
import base64
import email
import email.policy
import itertools
import json
import os
import socket
import ssl
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def describe(raw: bytes) -> dict:
    try:
        email.message_from_bytes(raw, policy=email.policy.strict)
        strict_error = None
    except Exception as e:  # the strict policy raises on the first defect
        strict_error = f"{type(e).__name__}: {e}"
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    headers, header_defects = [], []
    for name, value in msg.items():
        headers.append([name, str(value)])
        header_defects += [f"{name}: {d!r}" for d in getattr(value, "defects", ())]
    parts = []
    for part in msg.walk():
        p = {
            "content_type": part.get_content_type(),
            "params": {k: str(v) for k, v in (part.get_params() or [])[1:]},
            "disposition": part.get_content_disposition(),
            "filename": part.get_filename(),
            "content_id": part.get("Content-ID"),
            "transfer_encoding": part.get("Content-Transfer-Encoding"),
            "defects": [repr(d) for d in part.defects],
        }
        if not part.is_multipart():
            payload = part.get_payload(decode=True) or b""
            p["bytes"] = len(payload)
            if part.get_content_maintype() == "text":
                p["text"] = part.get_content()
        parts.append(p)
    return {
        "strict_error": strict_error,
        "headers": headers,
        "header_defects": header_defects,
        "parts": parts,
    }


class Capture:
    def __init__(self, out: str, implicit_tls: bool = False, dkim_records=None, oauth2=None,
                 reject=(), defer_once=(), max_rcpts=0):
        self.out = out
        # Recipient rules, by local part: rejected for good as Postfix
        # says it, deferred the first time as a greylist says it; at most
        # max_rcpts per transaction, as Postfix's smtpd_recipient_limit.
        self.reject = set(reject)
        self.defer_once = set(defer_once)
        self.deferred = set()
        self.max_rcpts = max_rcpts
        self.rcpt_log = os.path.join(out, "rcpt.log")
        self.implicit_tls = implicit_tls
        self.dkim_records = dkim_records or {}
        self.oauth2 = oauth2
        self.n = itertools.count(1)

    def dkim_verdict(self, raw: bytes) -> dict:
        """dkimpy's verdict on the message and on a copy with one body byte
        changed (which must fail), the keys' TXT records given by --dkim."""
        if not self.dkim_records:
            return {}
        import dkim

        def txt(name, timeout=5):
            return self.dkim_records.get(name.decode().rstrip("."), "").encode() or None

        end = raw.find(b"\r\n\r\n")
        tampered = raw[: end + 4] + b"X" + raw[end + 4:]
        return {
            "dkim": bool(dkim.verify(raw, dnsfunc=txt)),
            "dkim_tampered": bool(dkim.verify(tampered, dnsfunc=txt)),
        }

    async def auth_XOAUTH2(self, server, args):
        """SASL XOAUTH2 (Microsoft, Google): user=U^Aauth=Bearer T^A^A."""
        if len(args) > 1:
            data = base64.b64decode(args[1])
        else:
            data = await server.challenge_auth("")
            if not isinstance(data, bytes):
                return AuthResult(success=False, handled=False)
        fields = dict(p.split(b"=", 1) for p in data.split(b"\x01") if b"=" in p)
        user = fields.get(b"user", b"").decode()
        token = fields.get(b"auth", b"").decode().removeprefix("Bearer ")
        if (user, token) == self.oauth2:
            return AuthResult(success=True, auth_data=LoginPassword(user.encode(), b""))
        return AuthResult(success=False, handled=False)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@")[0]
        if self.max_rcpts and len(envelope.rcpt_tos) >= self.max_rcpts:
            reply = "452 4.5.3 Error: too many recipients"
        elif local in self.reject:
            reply = f"550 5.1.1 <{address}>: Recipient address rejected: User unknown in local recipient table"
        elif local in self.defer_once and address not in self.deferred:
            self.deferred.add(address)
            reply = f"451 4.7.1 <{address}>: Recipient address rejected: Greylisted, try again later"
        else:
            envelope.rcpt_tos.append(address)
            reply = "250 2.1.5 Ok"
        with open(self.rcpt_log, "a") as f:
            f.write(f"{address} {reply}\n")
        return reply

    async def handle_DATA(self, server, session, envelope):
        n = next(self.n)
        raw = envelope.original_content or envelope.content
        with open(os.path.join(self.out, f"{n}.eml"), "wb") as f:
            f.write(raw)
        info = {
            "helo": session.host_name,
            # aiosmtpd notes STARTTLS in session.ssl; smtps is TLS throughout.
            "tls": session.ssl is not None or self.implicit_tls,
            "login": session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None,
            **self.dkim_verdict(raw),
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "mail_options": envelope.mail_options,
            "received_at": time.time(),
            **describe(raw),
        }
        tmp = os.path.join(self.out, f".{n}.json")
        with open(tmp, "w") as f:
            json.dump(info, f, ensure_ascii=False)
        os.rename(tmp, os.path.join(self.out, f"{n}.json"))
        return "250 2.0.0 Ok: queued"


def parse_dumps(paths):
    """smtp-sink's dump files: its X-Client-/X-Helo-/X-Mail-/X-Rcpt- lines
    first, then the message as received. One JSON line per file."""
    for path in paths:
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
        prelude = []
        while lines and lines[0].split(b":")[0] in (
            b"X-Client-Addr", b"X-Client-Proto", b"X-Helo-Args", b"X-Mail-Args", b"X-Rcpt-Args"
        ):
            prelude.append(lines.pop(0).decode("utf-8", "replace"))
        info = {"file": path, "prelude": prelude, **describe(b"\n".join(lines))}
        print(json.dumps(info, ensure_ascii=False), flush=True)


def tls_and_auth(args) -> dict:
    kw = {}
    if args.starttls:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(*args.starttls)
        kw.update(tls_context=ctx, require_starttls=True)
    if args.smtps:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(*args.smtps)
        kw.update(ssl_context=ctx)
    if args.auth:
        user, password = args.auth.split(":", 1)

        def check(server, session, envelope, mechanism, auth_data):
            ok = isinstance(auth_data, LoginPassword) and (
                auth_data.login.decode(), auth_data.password.decode()) == (user, password)
            # handled=False: aiosmtpd answers 535 itself.
            return AuthResult(success=ok, handled=False, auth_data=auth_data)

        kw.update(authenticator=check, auth_required=True,
                  auth_require_tls=bool(args.starttls or args.smtps))
    if args.oauth2:
        # XOAUTH2 only (Capture.auth_XOAUTH2); PLAIN and LOGIN refused.
        kw.update(authenticator=lambda *a: AuthResult(success=False, handled=False),
                  auth_required=True, auth_require_tls=bool(args.starttls or args.smtps),
                  auth_exclude_mechanism=["LOGIN", "PLAIN"])
    else:
        kw.update(auth_exclude_mechanism=["XOAUTH2"])
    return kw


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir")
    ap.add_argument("--smtputf8", action="store_true")
    ap.add_argument("--parse", nargs="+", help="read smtp-sink dump files instead")
    ap.add_argument("--starttls", nargs=2, metavar=("CERT", "KEY"), help="offer and require STARTTLS")
    ap.add_argument("--smtps", nargs=2, metavar=("CERT", "KEY"), help="TLS from the first byte")
    ap.add_argument("--auth", metavar="USER:PASSWORD", help="require AUTH PLAIN/LOGIN")
    ap.add_argument("--oauth2", metavar="USER:TOKEN", help="require AUTH XOAUTH2 with this token")
    ap.add_argument("--reject", action="append", default=[], metavar="LOCAL",
                    help="550 5.1.1 to RCPT TO of this local part")
    ap.add_argument("--defer-once", action="append", default=[], metavar="LOCAL",
                    help="451 4.7.1 (greylisted) to the first RCPT TO of this local part")
    ap.add_argument("--max-rcpts", type=int, default=0,
                    help="452 4.5.3 too many recipients past this many per transaction")
    ap.add_argument("--dkim", action="append", default=[], metavar="NAME=TXT",
                    help="a DKIM key record (selector._domainkey.domain=v=DKIM1; ...) to verify with dkimpy")
    args = ap.parse_args()
    if args.parse:
        parse_dumps(args.parse)
        return
    os.makedirs(args.dir, exist_ok=True)
    # aiosmtpd's Controller connects to its own port once started, so it
    # needs a real one: take a free port, retrying if another process
    # takes it first.
    for attempt in range(20):
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        c = Controller(
            Capture(args.dir, implicit_tls=bool(args.smtps),
                    dkim_records=dict(d.split("=", 1) for d in args.dkim),
                    oauth2=tuple(args.oauth2.split(":", 1)) if args.oauth2 else None,
                    reject=args.reject, defer_once=args.defer_once, max_rcpts=args.max_rcpts),
            hostname="127.0.0.1",
            port=port,
            decode_data=False,
            enable_SMTPUTF8=args.smtputf8,
            server_hostname="capture.test",
            **tls_and_auth(args),
        )
        try:
            c.start()
            break
        except OSError:
            if attempt == 19:
                raise
    print(port, flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        c.stop()


if __name__ == "__main__":
    main()
