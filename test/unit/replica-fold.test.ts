/**
 * A replica's history folds (issue 5): over a real replication link (in process), the source
 * tells its replica how far no rollback of its can go back (STATE foldBefore), and the
 * replica's retention run folds that far — its history memory bounded like its source's —
 * while every point it keeps reads as the source's, and a restart folds as far again.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { pino } from 'pino';
import { RecordFlag } from '../../src/journal/index.js';
import { ReplicationService } from '../../src/replication/index.js';
import { VolumeManager } from '../../src/volume/index.js';
import { makeTempDir } from '../helpers/daemon.js';
import { Random } from '../helpers/random.js';

const KiB = 1024;
const SIZE = 1024 * KiB;
const KEY = crypto.randomBytes(32).toString('hex');

interface Site {
  dir: string;
  volumes: VolumeManager;
  replication: ReplicationService;
  port: number;
}

async function site(dir: string, lines: string[], listenPort = 0): Promise<Site> {
  const pskFile = path.join(dir, 'replication.psk');
  fs.writeFileSync(pskFile, `${lines.join('\n')}\n`, { mode: 0o600 });
  const volumes = new VolumeManager({ dataDir: path.join(dir, 'data'), syncEveryWrite: false, retentionIntervalMs: 0, segmentBytesMax: 128 * KiB });
  await volumes.open();
  const replication = ReplicationService.load({ dataDir: path.join(dir, 'data'), volumes, log: pino({ level: 'silent' }), pskFile, clients: () => 0 });
  const { port } = await replication.start('127.0.0.1', listenPort);
  return { dir, volumes, replication, port };
}

async function close(one: Site): Promise<void> {
  await one.replication.close();
  await one.volumes.close();
}

async function caughtUp(source: Site, replica: Site): Promise<void> {
  const target = source.volumes.replicationView('v').device.lastSeq;
  const deadline = Date.now() + 30_000;
  while (!replica.volumes.names().includes('v') || replica.volumes.replicationView('v').device.durableSeq < target) {
    assert.ok(Date.now() < deadline, `the link stalled: ${JSON.stringify(source.replication.list().outgoing)}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

async function image(one: Site, seq?: number): Promise<Buffer> {
  const out = Buffer.alloc(SIZE);
  if (seq === undefined) {
    await one.volumes.device('v')!.read(0, out);
  } else {
    const view = one.volumes.view('v', seq);
    try {
      await view.read(0, out);
    } finally {
      view.close();
    }
  }
  return out;
}

/** Failback of `v` from `b` onto `a` (its old source): done once `a` is `b`'s replica, caught up and reading as `b`. */
async function failBack(a: Site, b: Site): Promise<void> {
  await a.replication.remove('v');
  await a.replication.accept('v', 'siteB', true);
  await b.replication.replicate({ volume: 'v', to: `127.0.0.1:${a.port}` });
  const deadline = Date.now() + 30_000;
  // (While it turns into a replica, the volume is briefly not there.)
  const atA = () => (a.volumes.names().includes('v') ? a.volumes.replicationView('v') : null);
  while (!atA()?.replica || atA()!.device.durableSeq < b.volumes.replicationView('v').device.lastSeq) {
    assert.ok(Date.now() < deadline, `failback stalled: ${JSON.stringify(b.replication.list().outgoing)}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  const out = { a: Buffer.alloc(SIZE), b: Buffer.alloc(SIZE) };
  await a.volumes.replicationView('v').device.read(0, out.a);
  await b.volumes.device('v')!.read(0, out.b);
  assert.ok(out.a.equals(out.b), 'the original site reads as the DR site');
}

test('a replica folds its history as far as its source allows, over the wire; kept points stay the source\'s', { timeout: 120_000 }, async (t) => {
  const sourceDir = makeTempDir('hindsight-rfold-a-');
  const replicaDir = makeTempDir('hindsight-rfold-b-');
  t.after(() => {
    fs.rmSync(sourceDir, { recursive: true, force: true });
    fs.rmSync(replicaDir, { recursive: true, force: true });
  });
  const source = await site(sourceDir, [`siteA:${KEY}`]);
  let replica = await site(replicaDir, [`siteB:${crypto.randomBytes(32).toString('hex')}`, `siteA:${KEY}`]);
  try {
    await source.volumes.create('v', SIZE, { keep: 'all:1s' });
    await replica.replication.accept('v', 'siteA');
    await source.replication.replicate({ volume: 'v', to: `127.0.0.1:${replica.port}`, initial: 'history' });
    const rng = new Random(3);
    const device = source.volumes.device('v')!;
    const writes = async (count: number) => {
      for (let i = 0; i < count; i += 1) await device.write(16 * KiB * rng.int(SIZE / (16 * KiB)), rng.bytes(16 * KiB), { fua: i % 10 === 9 });
      await device.flush();
    };
    await writes(400);
    await caughtUp(source, replica);
    const replicaDevice = () => replica.volumes.replicationView('v').device;
    await replica.volumes.thin('v');
    assert.equal(replicaDevice().history.seqFirst, 1, 'nothing expired yet: the replica holds its whole history');

    // The source's points older than a second expire; it folds, and tells its replica.
    await new Promise((resolve) => setTimeout(resolve, 1500));
    await writes(20);
    const run = await source.volumes.thin('v');
    assert.ok(run.recordsFolded > 0, `the source folds (${JSON.stringify(run)})`);
    await writes(5); // a batch, after which the word goes
    await caughtUp(source, replica);
    const kept = source.volumes.replicationView('v').device.history.oldestKept();
    const replicaRun = await replica.volumes.thin('v');
    const folded = replicaDevice().history.seqFirst;
    assert.ok(replicaRun.recordsFolded > 0 && folded > 1 && folded <= kept, `the replica folds up to its oldest kept point (${JSON.stringify(replicaRun)}; seqFirst ${folded}, oldest kept ${kept})`);
    assert.ok((await image(replica)).equals(await image(source)), 'the replica reads as its source');
    assert.ok((await image(replica, kept)).equals(await image(source, kept)), `the oldest kept point (seq ${kept}) reads as its source's`);

    // A restart folds as it loads, as far as before; the link goes on.
    await close(replica);
    replica = await site(replicaDir, [`siteB:${crypto.randomBytes(32).toString('hex')}`, `siteA:${KEY}`], replica.port);
    assert.equal(replicaDevice().history.seqFirst, folded, 'the replica folds as far again as it loads');
    await writes(10);
    await caughtUp(source, replica);
    assert.ok((await image(replica)).equals(await image(source)), 'after the restart too');
    assert.deepEqual((await replica.volumes.fsck('v', false)).problems, [], 'the replica\'s journal checks out');
  } finally {
    await close(source);
    await close(replica).catch(() => undefined);
  }
});

test('failback onto a site whose retention expired the last seq both share: the cut is at a point it kept, and the volume reads as its new source', { timeout: 120_000 }, async (t) => {
  const aDir = makeTempDir('hindsight-fb-a-');
  const bDir = makeTempDir('hindsight-fb-b-');
  t.after(() => {
    fs.rmSync(aDir, { recursive: true, force: true });
    fs.rmSync(bDir, { recursive: true, force: true });
  });
  const keyB = crypto.randomBytes(32).toString('hex');
  const a = await site(aDir, [`siteA:${KEY}`, `siteB:${keyB}`]);
  const b = await site(bDir, [`siteB:${keyB}`, `siteA:${KEY}`]);
  try {
    await a.volumes.create('v', SIZE, { keep: 'all:1s' });
    await b.replication.accept('v', 'siteA');
    await a.replication.replicate({ volume: 'v', to: `127.0.0.1:${b.port}`, initial: 'history' });
    const rng = new Random(5);
    const blocks = SIZE / (16 * KiB);
    const writeAll = async (device: NonNullable<ReturnType<VolumeManager['device']>>, pattern: number) => {
      for (let block = 0; block < blocks; block += 1) await device.write(block * 16 * KiB, Buffer.alloc(16 * KiB, pattern + rng.int(8)), { fua: false });
      await device.flush();
    };
    await writeAll(a.volumes.device('v')!, 1);
    await caughtUp(a, b);
    // The link goes down; the original site goes on writing: it overwrites every block.
    await a.replication.setPaused('v', true);
    const shared = b.volumes.replicationView('v').device.lastSeq;
    await writeAll(a.volumes.device('v')!, 20);
    // Disaster: the DR site takes over and is written to.
    await b.replication.failover('v', undefined, () => 0, async () => undefined);
    await b.volumes.device('v')!.write(0, Buffer.alloc(16 * KiB, 99), { fua: true });
    // The original site's retention runs meanwhile: the seq both share expires there, and
    // what it showed is thinned (overwritten before the point kept after it).
    await new Promise((resolve) => setTimeout(resolve, 1500));
    await a.volumes.device('v')!.write(16 * KiB, Buffer.alloc(16 * KiB, 77), { fua: true });
    const run = await a.volumes.thin('v');
    const history = a.volumes.replicationView('v').device.history;
    assert.ok(history.expiredRunOf(shared) !== null && run.recordsThinned > 0, `the shared seq ${shared} expired at the original site, data thinned (${JSON.stringify(run)})`);

    // Failback: the original site becomes the DR site's replica.
    await failBack(a, b);
    assert.deepEqual((await a.volumes.fsck('v', false)).problems, [], 'its journal checks out');
  } finally {
    await close(a);
    await close(b);
  }
});

/**
 * A database's pattern on volume `v` of a site: page updates over a hot set, commits
 * (flushes), rewrites of the same bytes — most records of expired history change nothing.
 */
function pageWriter(rng: Random): (one: Site, count: number) => Promise<void> {
  const pages = Array.from({ length: 8 }, () => rng.bytes(4 * KiB));
  return async (one, count) => {
    const device = one.volumes.device('v')!;
    for (let i = 0; i < count; i += 1) {
      const page = rng.int(pages.length);
      if (rng.int(5) !== 0) rng.bytes(512).copy(pages[page], 512 * rng.int(8));
      await device.write(page * 4 * KiB, pages[page], { fua: false });
      if (i % 4 === 3) await device.flush();
    }
    await device.flush();
  };
}

/** Under `all:1s`: what was written expires; a retention run folds it, the next compacts it (runs). */
async function expireAndFold(one: Site, writes: (one: Site, count: number) => Promise<void>): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, 1200));
  await writes(one, 10);
  await one.volumes.thin('v');
  await one.volumes.thin('v');
}

/** The seqs of `one`'s volume whose records are in runs (pack.ts): their own times and ranges gone. */
function runSeqs(one: Site): number[] {
  const { device } = one.volumes.replicationView('v');
  const seqs: number[] = [];
  for (let seq = 1; seq <= device.lastSeq; seq += 1) if ((device.entryAt(seq).flags & RecordFlag.RUN) !== 0) seqs.push(seq);
  return seqs;
}

test('runs in folded history only below what the replica holds: a paused link reconnects, a new replica syncs them from seq 1 and follows on', { timeout: 180_000 }, async (t) => {
  const dirs = ['a', 'b', 'c'].map((name) => makeTempDir(`hindsight-runs-${name}-`));
  t.after(() => {
    for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
  });
  const a = await site(dirs[0], [`siteA:${KEY}`]);
  const b = await site(dirs[1], [`siteB:${crypto.randomBytes(32).toString('hex')}`, `siteA:${KEY}`]);
  let c: Site | null = null;
  try {
    await a.volumes.create('v', SIZE, { keep: 'all:1s' });
    await b.replication.accept('v', 'siteA');
    await a.replication.replicate({ volume: 'v', to: `127.0.0.1:${b.port}`, initial: 'history' });
    const writes = pageWriter(new Random(11));
    await writes(a, 600);
    await caughtUp(a, b);
    // The link goes down; the source goes on, and folds past what its replica holds.
    await a.replication.setPaused('v', true);
    const held = b.volumes.replicationView('v').device.durableSeq;
    await writes(a, 600);
    await expireAndFold(a, writes);
    assert.ok(a.volumes.replicationView('v').device.history.seqFirst > held + 100, 'the source folded well past what its replica holds');
    const before = runSeqs(a);
    assert.ok(before.length > 100, `runs were made (${before.length} records in runs)`);
    assert.ok(Math.max(...before) < held, `only below what the replica holds (${Math.max(...before)} < ${held})`);
    // Its last record is still the source's own: the link comes back without a word of divergence.
    await a.replication.setPaused('v', false);
    await writes(a, 5);
    await caughtUp(a, b);
    assert.ok((await image(b)).equals(await image(a)), 'the replica reads as its source');
    await expireAndFold(a, writes);
    const after = runSeqs(a);
    assert.ok(Math.max(...after) > held + 100, `with the replica caught up, runs reach further (${Math.max(...after)})`);

    // A new replica gets everything from seq 1, runs as they are.
    await a.replication.remove('v');
    c = await site(dirs[2], [`siteC:${crypto.randomBytes(32).toString('hex')}`, `siteA:${KEY}`]);
    await c.replication.accept('v', 'siteA');
    await a.replication.replicate({ volume: 'v', to: `127.0.0.1:${c.port}`, initial: 'history' });
    await caughtUp(a, c);
    assert.ok((await image(c)).equals(await image(a)), 'the new replica reads as its source');
    const kept = a.volumes.replicationView('v').device.history.oldestKept();
    assert.ok((await image(c, kept)).equals(await image(a, kept)), `the oldest kept point (seq ${kept}) too`);
    assert.deepEqual(runSeqs(c).filter((seq) => seq <= Math.max(...after)), after.filter((seq) => seq <= Math.max(...after)), 'the replica holds the runs as they are');
    // It restarts and the link goes on (the handshake compares its last record), and its own
    // retention keeps the runs as they are.
    await close(c);
    c = await site(dirs[2], [`siteC:${crypto.randomBytes(32).toString('hex')}`, `siteA:${KEY}`], c.port);
    await writes(a, 50);
    await caughtUp(a, c);
    await c.volumes.thin('v');
    await expireAndFold(a, writes);
    await caughtUp(a, c);
    await c.volumes.thin('v');
    await c.volumes.thin('v');
    assert.ok((await image(c)).equals(await image(a)), 'after the restart too');
    // (Its own runs may join those it was sent: its records in runs are never compared —
    // the handshake compares its last record, a failback the points it keeps.)
    const replicaRuns = new Set(runSeqs(c));
    for (const seq of after) assert.ok(replicaRuns.has(seq), `seq ${seq} is in a run at the replica too`);
    assert.deepEqual((await a.volumes.fsck('v', false)).problems, [], 'the source\'s journal checks out');
    assert.deepEqual((await c.volumes.fsck('v', false)).problems, [], 'the replica\'s journal checks out');
  } finally {
    await close(a);
    await close(b);
    if (c) await close(c).catch(() => undefined);
  }
});

test('a link removed while its replica lags and made again (a new address): runs stayed below what the replica holds, the link goes on', { timeout: 120_000 }, async (t) => {
  const dirs = ['a', 'b'].map((name) => makeTempDir(`hindsight-relink-${name}-`));
  t.after(() => {
    for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
  });
  let a = await site(dirs[0], [`siteA:${KEY}`]);
  const bLines = [`siteB:${crypto.randomBytes(32).toString('hex')}`, `siteA:${KEY}`];
  const b = await site(dirs[1], bLines);
  try {
    await a.volumes.create('v', SIZE, { keep: 'all:1s' });
    await b.replication.accept('v', 'siteA');
    await a.replication.replicate({ volume: 'v', to: `127.0.0.1:${b.port}`, initial: 'history' });
    const writes = pageWriter(new Random(12));
    await writes(a, 600);
    await caughtUp(a, b);
    await a.replication.setPaused('v', true);
    const held = b.volumes.replicationView('v').device.lastSeq;
    await writes(a, 600);
    // The link goes (to be made again with another address); the source restarts meanwhile.
    await a.replication.remove('v');
    await close(a);
    a = await site(dirs[0], [`siteA:${KEY}`], a.port);
    await expireAndFold(a, writes);
    assert.ok(a.volumes.replicationView('v').device.history.seqFirst > held + 100, 'the source folded well past what the replica holds');
    const runs = runSeqs(a);
    assert.ok(runs.length > 0 && Math.max(...runs) < held, `runs only below what the replica holds (${Math.max(...runs)} < ${held})`);
    await a.replication.replicate({ volume: 'v', to: `127.0.0.1:${b.port}`, initial: 'history' });
    await caughtUp(a, b);
    assert.ok((await image(b)).equals(await image(a)), 'the replica reads as its source');
  } finally {
    await close(a);
    await close(b);
  }
});

test('failover, a shorter policy at the promoted site, failback: its runs stayed below what the old site offers, which is taken as the common seq', { timeout: 120_000 }, async (t) => {
  const dirs = ['a', 'b'].map((name) => makeTempDir(`hindsight-fo-runs-${name}-`));
  t.after(() => {
    for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
  });
  const keyB = crypto.randomBytes(32).toString('hex');
  const a = await site(dirs[0], [`siteA:${KEY}`, `siteB:${keyB}`]);
  const b = await site(dirs[1], [`siteB:${keyB}`, `siteA:${KEY}`]);
  try {
    await a.volumes.create('v', SIZE, { keep: 'all:1s,1s:1h' });
    await b.replication.accept('v', 'siteA');
    await a.replication.replicate({ volume: 'v', to: `127.0.0.1:${b.port}`, initial: 'history' });
    const writes = pageWriter(new Random(13));
    for (let i = 0; i < 6; i += 1) {
      await writes(a, 250);
      await new Promise((resolve) => setTimeout(resolve, 300));
    }
    await caughtUp(a, b);
    await a.replication.setPaused('v', true);
    await writes(a, 50);
    // Disaster: the DR site takes over, with a shorter policy (less disk there).
    await b.replication.failover('v', undefined, () => 0, async () => undefined);
    const promotedSeq = b.volumes.replicationView('v').promoted!.seq;
    await b.volumes.update('v', { keep: 'all:1s' });
    await new Promise((resolve) => setTimeout(resolve, 1500));
    await writes(b, 20);
    await a.volumes.thin('v');
    await b.volumes.thin('v');
    await b.volumes.thin('v');
    const bDevice = b.volumes.replicationView('v').device;
    // What the old site offers at or before the promotion: a point it keeps, earlier.
    const candidate = a.volumes.replicationView('v').device.history.keptAtOrBefore(promotedSeq);
    // (Before the promotion's seq unless that last write of the link was the last of its second.)
    assert.ok(candidate > 0 && candidate <= promotedSeq, `the candidate ${candidate} is at or before the promotion (${promotedSeq})`);
    assert.ok(runSeqs(b).every((seq) => seq < candidate), 'the promoted site made no runs up to it');
    const commons: number[] = [];
    const convert = a.volumes.convertToReplica.bind(a.volumes);
    a.volumes.convertToReplica = ((...args: Parameters<typeof convert>) => {
      commons.push(args[1]);
      return convert(...args);
    }) as typeof convert;
    assert.ok(b.volumes.replicationView('v').promoted?.runsBelow !== undefined, 'runs at the promoted site stop below what the old site may offer');
    await failBack(a, b);
    assert.equal(commons[0], candidate, 'failback goes on from the point both keep, not from scratch');
    // Failed back: that floor goes (the old site is its replica now).
    await writes(b, 5);
    const deadline = Date.now() + 10_000;
    while (b.volumes.replicationView('v').promoted?.runsBelow !== undefined) {
      assert.ok(Date.now() < deadline, 'the failback was noted done');
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  } finally {
    await close(a);
    await close(b);
  }
});

test('a receiver made again holds less than it acknowledged before: what is saved for runs comes down with it, also across a restart', { timeout: 150_000 }, async (t) => {
  const dirs = ['a', 'b'].map((name) => makeTempDir(`hindsight-ack-${name}-`));
  t.after(() => {
    for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
  });
  let a = await site(dirs[0], [`siteA:${KEY}`]);
  const b = await site(dirs[1], [`siteB:${crypto.randomBytes(32).toString('hex')}`, `siteA:${KEY}`]);
  try {
    await a.volumes.create('v', SIZE, { keep: 'all:1s' });
    await b.replication.accept('v', 'siteA');
    await a.replication.replicate({ volume: 'v', to: `127.0.0.1:${b.port}`, initial: 'history' });
    const writes = pageWriter(new Random(21));
    await writes(a, 600);
    await caughtUp(a, b);
    const saved = () => (JSON.parse(fs.readFileSync(path.join(dirs[0], 'data', 'replication.json'), 'utf8')) as { outgoing: Array<{ acknowledged?: number }> }).outgoing[0].acknowledged ?? 0;
    // (The first acknowledgement of a session is saved at once.)
    await close(a);
    a = await site(dirs[0], [`siteA:${KEY}`], a.port);
    await writes(a, 5);
    await caughtUp(a, b);
    const deadline = Date.now() + 10_000;
    while (saved() < 600) {
      assert.ok(Date.now() < deadline, `the receiver's acknowledged seq is saved (${saved()})`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    // The receiver starts over (deleted, accepted again) and gets part of the way.
    await a.replication.setPaused('v', true);
    await b.replication.refuse('v');
    await b.volumes.delete('v', async () => undefined, true);
    await b.replication.accept('v', 'siteA');
    await a.replication.update('v', { bandwidth: '64K' });
    await a.replication.setPaused('v', false);
    while (!b.volumes.names().includes('v') || b.volumes.replicationView('v').device.durableSeq < 60) {
      assert.ok(Date.now() < deadline + 50_000, 'the new copy gets records');
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    await a.replication.setPaused('v', true);
    const held = b.volumes.replicationView('v').device.lastSeq;
    assert.ok(saved() <= held, `what is saved came down (${saved()}, the receiver holds ${held})`);
    // A restart while the link is down: runs stay below what the new copy holds.
    await close(a);
    a = await site(dirs[0], [`siteA:${KEY}`], a.port);
    await expireAndFold(a, writes);
    const runs = runSeqs(a);
    assert.ok(runs.every((seq) => seq < held), `runs (up to ${Math.max(0, ...runs)}) stayed below what the receiver holds (${held})`);
    await a.replication.update('v', { bandwidth: null });
    await a.replication.setPaused('v', false);
    await caughtUp(a, b);
    assert.ok((await image(b)).equals(await image(a)), 'the new copy reads as its source');
  } finally {
    await close(a);
    await close(b);
  }
});
