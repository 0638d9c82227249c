"""A TGI-compatible development server backed by the local backend (a test double for TGI, named so).

Real TGI needs a GPU and cannot run here; this server speaks the part of TGI's HTTP API the generator
uses, with TGI's behaviour where it matters, so the tgi backend is exercised end to end on a laptop:

    GET  /health     200 once the model is loaded
    GET  /info       model_id, model_sha, model_device_type, max_total_tokens, version
    POST /generate   {"inputs", "parameters": {adapter_id, max_new_tokens, temperature, top_k, top_p,
                     do_sample, seed, repetition_penalty, details, decoder_input_details}}
                     → {"generated_text", "details": {finish_reason, generated_tokens, seed, prefill}}

Like TGI it takes LoRA adapters only at start (`--lora-adapters name=path,...` or LORA_ADAPTERS) and,
like TGI, it answers a request for an adapter it does not have with the base model, silently (a
warning in its log): the generator must notice that itself. It accepts text-generation-launcher's
flags (--model-id, --port, --hostname, --lora-adapters), so the generator's managed mode can launch it:

    python -m services.generator.tgi_dev --model-id '' --port 8080 --lora-adapters cycle-1=/path/to/adapter
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from archloop.errors import ArchLoopError
from services.generator.backend import Decoding
from services.generator.local import LocalBackend

VERSION = "archloop-tgi-dev-1"


def parse_adapters(listed: str) -> dict[str, str]:
    """TGI's list "name=path,name2=path2" → {name: path}; a bare name is its own path."""
    adapters = {}
    for item in filter(None, (x.strip() for x in listed.split(","))):
        name, _, path = item.partition("=")
        adapters[name] = path or name
    return adapters


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        if os.environ.get("ARCHLOOP_TGI_DEV_VERBOSE"):
            super().log_message(format, *args)

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        backend = self.server.backend
        if self.path == "/health":
            self._send(200, {})
        elif self.path == "/info":
            self._send(
                200,
                {
                    "model_id": self.server.model_id or backend.model_id,
                    "model_sha": backend.model_sha256,
                    "model_dtype": "torch.float32",
                    "model_device_type": backend.device,
                    "max_total_tokens": backend.context_tokens,
                    "version": VERSION,
                    "router": "archloop-tgi-dev",
                },
            )
        else:
            self._send(404, {"error": f"no route {self.path}", "error_type": "not_found"})

    def do_POST(self) -> None:
        if self.path != "/generate":
            self._send(404, {"error": f"no route {self.path}", "error_type": "not_found"})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length) or b"{}")
            self._send(200, self.server.generate(body))
        except (ValueError, TypeError, KeyError) as exc:
            self._send(422, {"error": f"Input validation error: {exc}", "error_type": "validation"})
        except ArchLoopError as exc:
            self._send(422, {"error": str(exc), "error_type": "validation"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], backend: LocalBackend, model_id: str) -> None:
        super().__init__(address, _Handler)
        self.backend = backend
        self.model_id = model_id

    def generate(self, body: dict) -> dict:
        inputs = body["inputs"]
        if not isinstance(inputs, str) or not inputs:
            raise ValueError("`inputs` must be a non-empty string")
        p = body.get("parameters") or {}
        adapter = p.get("adapter_id") or ""
        if adapter and adapter not in self.backend.adapters:
            print(
                f"WARN adapter {adapter!r} is not loaded; using the base model", file=sys.stderr, flush=True
            )
            adapter = ""  # TGI's behaviour: a silent fallback to the base model
        max_new = int(p.get("max_new_tokens") or 100)
        if max_new < 1:
            raise ValueError("`max_new_tokens` must be strictly positive")
        sampling = bool(p.get("do_sample")) or any(p.get(k) for k in ("temperature", "top_k", "top_p"))
        decoding = Decoding(
            float(p.get("temperature") or 1.0) if sampling else 0.0,
            int(p.get("top_k") or 0),
            float(p.get("top_p") or 1.0),
            max_new,
            float(p.get("repetition_penalty") or 1.0),
        )
        seed = int(p.get("seed") or 0)
        completion = self.backend.generate_texts([inputs], decoding, seed, adapter)[0]
        answer: dict[str, Any] = {"generated_text": completion.text}
        if p.get("details") or p.get("decoder_input_details"):
            details: dict[str, Any] = {
                "finish_reason": "eos_token" if completion.finished else "length",
                "generated_tokens": completion.completion_tokens,
                "seed": seed if sampling else None,
                "prefill": [],
                "tokens": [],
            }
            if p.get("decoder_input_details"):
                details["prefill"] = [
                    {"id": t, "text": text, "logprob": lp}
                    for t, text, lp in self.backend.prompt_logprobs(inputs, adapter)
                ]
            answer["details"] = details
        return answer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tgi-dev", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-id", default="", help="base model folder or hub name ('' = the tiny model)")
    parser.add_argument("--hostname", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--lora-adapters", default=os.environ.get("LORA_ADAPTERS", ""))
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    backend = LocalBackend(args.model_id, "cpu", args.threads)
    for name, path in parse_adapters(args.lora_adapters).items():
        try:
            backend.load_adapter(name, path)
        except ArchLoopError as exc:
            print(f"tgi-dev: --lora-adapters: {exc}", file=sys.stderr)
            return 2
    server = _Server((args.hostname, args.port), backend, args.model_id)
    print(f"tgi-dev listening on {args.hostname}:{server.server_address[1]}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
