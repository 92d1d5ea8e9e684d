#!/usr/bin/python3
"""
A long-lived NBD probe for the benchmarks (pit-bench.ts): one libnbd client process that
answers requests on stdin, one JSON object per line, so that no measurement pays for a
process start. Needs the system python3 with libnbd's bindings (Debian: python3-libnbd).

Request:  {"uri": "nbd://...", "offset": N, "seqOffset": N, "seqBytes": N, "chunkBytes": N,
           "depth": N, "stamps": true}
Answer:   {"ok": true, "connectMs": x, "firstReadMs": x, "head": "hex of the first 32 bytes",
           "sizeBytes": N, "seqMs": x, "stamps": "base64 of u32 LE per 4 KiB block"}
          or {"ok": false, "error": "..."}

connectMs   connect_uri: TCP connect + the whole handshake (OPT_GO, structured replies)
firstReadMs one 4 KiB pread at `offset` right after the handshake
seqMs       `seqBytes` read from `seqOffset` with `depth` aio_pread of `chunkBytes` in flight
stamps      (with "stamps") the u32 at byte 4 of every 4 KiB block of the sequential read
            when the block starts with the stamp magic, else 0; extracted after the timing.
"""
import base64
import json
import struct
import sys
import time

import nbd

STAMP_MAGIC = 0x48535042  # "HSPB", little endian, written by the benchmark's history builder


def sequential(h, offset, length, chunk, depth):
    """Reads [offset, offset+length) with `depth` reads in flight. Every chunk gets its own
    buffer, allocated and touched before the clock starts, so no page faults are timed and
    every byte is still there for the stamp check afterwards."""
    sizes = []
    at = offset
    while at < offset + length:
        sizes.append((at, min(chunk, offset + length - at)))
        at += sizes[-1][1]
    buffers = [nbd.Buffer.from_bytearray(bytearray(size)) for _, size in sizes]
    started = time.perf_counter()
    inflight = set()
    issued = 0
    while issued < len(sizes) or inflight:
        while issued < len(sizes) and len(inflight) < depth:
            inflight.add(h.aio_pread(buffers[issued], sizes[issued][0]))
            issued += 1
        h.poll(-1)
        for cookie in [c for c in inflight if h.aio_command_completed(c)]:
            inflight.discard(cookie)
    elapsed_ms = (time.perf_counter() - started) * 1e3
    return elapsed_ms, [(where, buf) for (where, _), buf in zip(sizes, buffers)]


def stamps_of(kept, offset, length):
    blocks = length // 4096
    out = bytearray(blocks * 4)
    for where, buf in kept:
        data = buf.to_bytearray()
        for i in range(0, len(data), 4096):
            magic, seq = struct.unpack_from('<II', data, i)
            if magic == STAMP_MAGIC:
                struct.pack_into('<I', out, ((where - offset) + i) // 4096 * 4, seq)
    return base64.b64encode(bytes(out)).decode('ascii')


def probe(request):
    started = time.perf_counter()
    h = nbd.NBD()
    h.connect_uri(request['uri'])
    connected = time.perf_counter()
    first = h.pread(4096, request.get('offset', 0))
    first_done = time.perf_counter()
    answer = {
        'ok': True,
        'connectMs': (connected - started) * 1e3,
        'firstReadMs': (first_done - connected) * 1e3,
        'head': bytes(first[:32]).hex(),
        'sizeBytes': h.get_size(),
    }
    seq_bytes = request.get('seqBytes', 0)
    if seq_bytes:
        seq_offset = request.get('seqOffset', 0)
        answer['seqMs'], kept = sequential(h, seq_offset, seq_bytes, request.get('chunkBytes', 1 << 20), request.get('depth', 16))
        if request.get('stamps'):
            answer['stamps'] = stamps_of(kept, seq_offset, seq_bytes)
    h.shutdown()
    del h
    return answer


def main():
    sys.stdout.write(json.dumps({'ok': True, 'ready': True, 'libnbd': nbd.NBD().get_version()}) + '\n')
    sys.stdout.flush()
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            answer = probe(json.loads(line))
        except Exception as err:  # noqa: BLE001 - every failure goes back to the caller
            answer = {'ok': False, 'error': f'{type(err).__name__}: {err}'}
        sys.stdout.write(json.dumps(answer) + '\n')
        sys.stdout.flush()


if __name__ == '__main__':
    main()
