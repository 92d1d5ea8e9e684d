/**
 * Long operations (restore today; export, import and verify later) run as jobs: started by
 * one API call, watched with another (progress for the CLI's bar), their result or error
 * kept for a while after they finish. Bounded: the oldest finished jobs are forgotten.
 */
import { randomUUID } from 'node:crypto';
import { HindsightError, LIMITS } from '../core/index.js';

const FINISHED_JOBS_KEPT = 100;

export interface JobInfo {
  id: string;
  kind: string;
  /** What the job works on, e.g. the volume name. */
  subject: string;
  state: 'running' | 'done' | 'failed';
  bytesDone: number;
  bytesTotal: number;
  startedAt: string;
  finishedAt: string | null;
  result: unknown;
  error: { code: string; message: string } | null;
}

export interface JobControl {
  progress(bytesDone: number, bytesTotal: number): void;
  /** Set when the daemon is stopping: the job should give up soon. */
  cancelled(): boolean;
}

export class JobRegistry {
  private readonly jobs = new Map<string, JobInfo>();
  private stopping = false;
  private readonly running = new Map<string, { run: Promise<unknown>; cancelled: boolean }>();

  constructor(private readonly runningMax = LIMITS.jobsRunningMax) {}

  start(kind: string, subject: string, work: (control: JobControl) => Promise<unknown>): JobInfo {
    if (this.stopping) throw new HindsightError('SHUTTING_DOWN', 'the daemon is stopping');
    if (this.running.size >= this.runningMax) {
      throw new HindsightError('LIMIT_REACHED', `${this.running.size} jobs are running (at most ${this.runningMax} at once); wait for one to finish`);
    }
    const job: JobInfo = {
      id: randomUUID(), kind, subject, state: 'running', bytesDone: 0, bytesTotal: 0,
      startedAt: new Date().toISOString(), finishedAt: null, result: null, error: null,
    };
    this.jobs.set(job.id, job);
    const entry = { run: Promise.resolve() as Promise<unknown>, cancelled: false };
    const control: JobControl = {
      progress: (done, total) => {
        job.bytesDone = done;
        job.bytesTotal = total;
      },
      cancelled: () => this.stopping || entry.cancelled,
    };
    const run = work(control).then((result) => {
      job.state = 'done';
      job.result = result;
    }, (err: unknown) => {
      job.state = 'failed';
      job.error = err instanceof HindsightError ? err.toJSON() : { code: 'INTERNAL', message: (err as Error)?.message ?? String(err) };
    }).finally(() => {
      job.finishedAt = new Date().toISOString();
      this.running.delete(job.id);
      this.forgetOld();
    });
    entry.run = run;
    this.running.set(job.id, entry);
    return { ...job };
  }

  get(id: string): JobInfo {
    const job = this.jobs.get(id);
    if (!job) throw new HindsightError('JOB_NOT_FOUND', `no job with id "${id}" (finished jobs are kept only for a while)`);
    return { ...job };
  }

  list(): JobInfo[] {
    return [...this.jobs.values()].map((job) => ({ ...job }));
  }

  /** Running jobs working on `subject` (a volume). */
  runningFor(subject: string): JobInfo[] {
    return [...this.running.keys()].map((id) => this.jobs.get(id)!).filter((job) => job.subject === subject).map((job) => ({ ...job }));
  }

  /** Asks the running jobs on `subject` to stop, and waits for them. */
  async cancel(subject: string): Promise<void> {
    const entries = [...this.running.entries()].filter(([id]) => this.jobs.get(id)?.subject === subject).map(([, entry]) => entry);
    for (const entry of entries) entry.cancelled = true;
    await Promise.allSettled(entries.map((entry) => entry.run));
  }

  /** Asks running jobs to stop and waits for them. */
  async stop(): Promise<void> {
    this.stopping = true;
    await Promise.allSettled([...this.running.values()].map((entry) => entry.run));
  }

  private forgetOld(): void {
    const finished = [...this.jobs.values()].filter((job) => job.state !== 'running');
    for (const job of finished.slice(0, Math.max(0, finished.length - FINISHED_JOBS_KEPT))) this.jobs.delete(job.id);
  }
}
