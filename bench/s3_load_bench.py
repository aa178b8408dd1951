"""Benchmark: loading a prefix of small text objects from S3, serially and as batchline loads it.

    .venv/bin/python bench/s3_load_bench.py [--objects 10000] [--bytes 500] [--latency-ms 0]

moto's S3 server runs as its own process on loopback (so it does not share the client's GIL),
is filled with ``--objects`` text objects under one prefix, and the prefix is read twice in the
same run: by a plain serial loop of ``fs.cat_file`` (one GET per object, one after another, as the
loader read before), and by ``batchline.load.iter_shards`` (listing, concurrent fetches, checks).
Prints objects per second for each and the machine's load average, since the two cores are shared.

On loopback a GET costs moto's CPU and no wait, so requests in flight gain little there; a real
store answers each GET after a round trip. ``--latency-ms`` reads through a proxy that holds each
request that long before passing it on, to show what that wait costs a serial loop.

The last line is moto's own ceiling: the prefix read again by ``--clients`` processes at once,
each with many GETs in flight. No loader can go faster than the server it reads from, so when
that ceiling is under 20 times the serial rate, so is every loader's figure on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ProcessPoolExecutor

import s3fs

from batchline.config import SourceOptions
from batchline.load import iter_shards
from batchline.processes import free_port

BUCKET = "batchline-bench"


def start_moto(port: int) -> subprocess.Popen[bytes]:
    """moto's S3 server on 127.0.0.1:port, once it answers."""
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
            return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("moto's server did not start within 60 s")


def start_delaying_proxy(target_port: int, delay: float) -> int:
    """A TCP proxy to 127.0.0.1:target_port holding what a client sends ``delay`` s; its port."""
    port = free_port()
    ready = threading.Event()

    async def forward(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, wait: float
    ) -> None:
        try:
            while data := await reader.read(1 << 16):
                await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def connect(
        client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(
            forward(client_reader, server_writer, delay),
            forward(server_reader, client_writer, 0),
            return_exceptions=True,
        )

    async def serve() -> None:
        server = await asyncio.start_server(connect, "127.0.0.1", port)
        ready.set()
        await server.serve_forever()

    threading.Thread(target=asyncio.run, args=(serve(),), daemon=True).start()
    ready.wait()
    return port


def read_all(endpoint: str, paths: list[str]) -> int:
    """GET every path with s3fs's batch of requests in flight; how many came back."""
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)
    return sum(len(body) > 0 for body in fs.cat(paths, batch_size=64).values())


def server_ceiling(endpoint: str, paths: list[str], clients: int) -> float:
    """Objects per second moto serves to ``clients`` processes reading ``paths`` at once."""
    chunks = [paths[i::clients] for i in range(clients)]
    with ProcessPoolExecutor(clients) as pool:
        list(pool.map(read_all, [endpoint] * clients, [c[:10] for c in chunks]))  # warm up
        started = time.perf_counter()
        read = sum(pool.map(read_all, [endpoint] * clients, chunks))
        seconds = time.perf_counter() - started
    assert read == len(paths), (read, len(paths))
    return read / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--bytes", type=int, default=500, help="Size of each object.")
    parser.add_argument(
        "--latency-ms", type=float, default=0, help="Wait added to each request on reading."
    )
    parser.add_argument(
        "--clients", type=int, default=4, help="Processes reading at once for the ceiling."
    )
    args = parser.parse_args()

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
    )
    server = start_moto(port)
    try:
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)
        fs.mkdir(BUCKET)
        body = ("lorem ipsum " * (args.bytes // 12 + 1))[: args.bytes].encode()
        fs.pipe({f"{BUCKET}/docs/{i:07d}.txt": body for i in range(args.objects)})
        if args.latency_ms:
            proxy = start_delaying_proxy(port, args.latency_ms / 1000)
            endpoint = os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{proxy}"
            fs = s3fs.S3FileSystem(
                client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True
            )
        load_before = os.getloadavg()

        started = time.perf_counter()
        paths = fs.find(f"{BUCKET}/docs")
        serial = sum(len(fs.cat_file(path)) > 0 for path in paths)
        serial_seconds = time.perf_counter() - started

        started = time.perf_counter()
        options = SourceOptions()
        shards = iter_shards(f"s3://{BUCKET}/docs", options)
        loaded = sum(d.invalid_reason is None for shard in shards for d in shard)
        batchline_seconds = time.perf_counter() - started
        ceiling_rate = server_ceiling(endpoint, paths, args.clients)
        load_after = os.getloadavg()
    finally:
        server.terminate()
        server.wait()

    assert serial == loaded == args.objects, (serial, loaded)
    serial_rate, batchline_rate = serial / serial_seconds, loaded / batchline_seconds
    print(f"machine      {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}")
    print(f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print(f"objects      {args.objects:,} of {args.bytes} bytes, moto's server in its own process")
    print(f"latency      {args.latency_ms:g} ms added to each request")
    print(f"serial       {serial_seconds:8.2f} s {serial_rate:10,.0f} objects/s (fs.cat_file loop)")
    print(
        f"batchline    {batchline_seconds:8.2f} s {batchline_rate:10,.0f} objects/s "
        f"({batchline_rate / serial_rate:.1f}x, iter_shards)"
    )
    print(
        f"moto ceiling {'':8} {ceiling_rate:10,.0f} objects/s "
        f"({ceiling_rate / serial_rate:.1f}x, {args.clients} processes, 64 GETs in flight each)"
    )


if __name__ == "__main__":
    main()
