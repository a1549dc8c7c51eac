"""A tiny uvloop HTTP/1.1 server answering every POST with a fixed chat completion (or SSE stream).

It stands in for the upstream model in bench_proxy.py: as cheap as possible, so that what is measured
is the proxy. Usage: python bench/fast_upstream.py PORT
"""

import asyncio
import sys

import uvloop

BODY = (
    b'{"id":"chatcmpl-bench0000000000000000","object":"chat.completion","created":1741569952,'
    b'"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Paris.",'
    b'"refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":25,'
    b'"completion_tokens":2,"total_tokens":27},"service_tier":"default","system_fingerprint":"fp_bench"}'
)
RESP = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-request-id: req_bench\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
CHUNK = b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4o-mini","choices":[{"index":0,"delta":%s,"logprobs":null,"finish_reason":%s}]%s}\n\n'


def sse(include_usage: bool) -> bytes:
    u = b',"usage":null' if include_usage else b""
    parts = [CHUNK % (b'{"role":"assistant","content":""}', b"null", u), CHUNK % (b'{"content":"Paris."}', b"null", u),
             CHUNK % (b"{}", b'"stop"', u)]
    if include_usage:
        parts.append(b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1741569952,"model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":25,"completion_tokens":2,"total_tokens":27}}\n\n')
    parts.append(b"data: [DONE]\n\n")
    body = b"".join(parts)
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


SSE = {True: sse(True), False: sse(False)}


class Proto(asyncio.Protocol):
    def connection_made(self, transport):
        self.t = transport
        self.buf = b""

    def data_received(self, data):
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            i = head.find(b"content-length:")
            n = int(head[i + 15 : head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0 else None]) if i >= 0 else 0
            if len(self.buf) < end + 4 + n:
                return
            body = self.buf[end + 4 : end + 4 + n]
            self.buf = self.buf[end + 4 + n :]
            if b'"stream":true' in body:
                self.t.write(SSE[b'"include_usage":true' in body])
            else:
                self.t.write(RESP)


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Proto, "127.0.0.1", port, backlog=1024)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
