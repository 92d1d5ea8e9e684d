# A write stream for the kill -9 test, run inside nbdsh (`h` is connected to the volume):
#   nbdsh -u URI -c 'exec(open("writer.py").read())'
# Parameters come from the environment:
#   HS_SEED    seeds the plan (offsets, lengths, kinds, FUA) and the data
#   HS_BLOCKS  4 KiB blocks the writes may touch, from offset 0
#   HS_HOT     the first HS_HOT blocks get half of the writes (so blocks are overwritten often)
#   HS_DEPTH   commands in flight at most (aio); never two in flight on one block
#   HS_WRITES  stop after this many writes (the test normally kills the daemon long before)
#
# It prints one line per event, flushed, in the order it saw them:
#   S ID KIND BLOCK NBLOCKS FUA   about to send write ID (KIND W = data, Z = write zeroes)
#   A ID                          write ID acknowledged (success)
#   E ID ERRNO                    write ID failed
#   F ID                          about to send flush ID
#   FA ID                         flush ID acknowledged (success)
#   FE ID ERRNO                   flush ID failed
#   X REASON                      the connection broke (the daemon died); the script ends
#   END                           HS_WRITES were all sent and completed
# The data of block J of write ID is SHAKE256("SEED:ID:J") truncated to 4096 bytes, so the
# test recomputes every version without the script sending it back.
import hashlib
import os
import random
import sys

import nbd

BLOCK = 4096
seed = int(os.environ['HS_SEED'])
blocks = int(os.environ['HS_BLOCKS'])
hot = int(os.environ.get('HS_HOT', '256'))
depth = int(os.environ.get('HS_DEPTH', '8'))
writes_max = int(os.environ.get('HS_WRITES', '1000000'))
rng = random.Random(seed)


def emit(line):
    sys.stdout.write(line + '\n')
    sys.stdout.flush()


def data_for(write_id, count):
    return b''.join(hashlib.shake_256(f'{seed}:{write_id}:{j}'.encode()).digest(BLOCK) for j in range(count))


inflight = {}      # key -> buffer kept alive until completion
busy = set()       # blocks with a write in flight


def write_done(write_id, first, count, err):
    code = err.value if hasattr(err, 'value') else int(err)
    emit(f'A {write_id}' if code == 0 else f'E {write_id} {code}')
    for b in range(first, first + count):
        busy.discard(b)
    inflight.pop(('w', write_id), None)
    return 1


def flush_done(flush_id, err):
    code = err.value if hasattr(err, 'value') else int(err)
    emit(f'FA {flush_id}' if code == 0 else f'FE {flush_id} {code}')
    inflight.pop(('f', flush_id), None)
    return 1


write_id = 0
flush_id = 0
try:
    while write_id < writes_max:
        while len(inflight) >= depth:
            h.poll(-1)
        if rng.random() < 0.06:
            flush_id += 1
            emit(f'F {flush_id}')
            inflight[('f', flush_id)] = None
            h.aio_flush(completion=lambda err, fid=flush_id: flush_done(fid, err))
        else:
            count = rng.randint(1, 8)
            top = hot if rng.random() < 0.5 else blocks
            first = rng.randrange(0, top - count + 1)
            kind = 'Z' if rng.random() < 0.04 else 'W'
            fua = rng.random() < 0.12
            while any(b in busy for b in range(first, first + count)):
                h.poll(-1)
            write_id += 1
            for b in range(first, first + count):
                busy.add(b)
            flags = nbd.CMD_FLAG_FUA if fua else 0
            emit(f'S {write_id} {kind} {first} {count} {int(fua)}')
            callback = (lambda err, wid=write_id, f=first, c=count: write_done(wid, f, c, err))
            if kind == 'W':
                buf = data_for(write_id, count)
                inflight[('w', write_id)] = buf
                h.aio_pwrite(buf, first * BLOCK, completion=callback, flags=flags)
            else:
                inflight[('w', write_id)] = None
                h.aio_zero(count * BLOCK, first * BLOCK, completion=callback, flags=flags)
        # Let replies in without waiting for them.
        while inflight and h.poll(0) == 1:
            pass
    while inflight:
        h.poll(-1)
    emit('END')
except Exception as err:  # the daemon was killed: the connection is gone
    emit(f'X {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ""}')
