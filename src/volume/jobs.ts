/**
 * Long operations (restore today; export, import and verify later) run as jobs: started by
 * one API call, watched with another (progress for the CLI's bar), their result or error
 * kept for a while after they finish. Bounded: the oldest finished jobs are forgotten.
 */
import { randomUUID } from 'node:crypto';
import { HindsightError } from '../core/index.js';

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
  private readonly running = new Set<Promise<unknown>>();

  start(kind: string, subject: string, work: (control: JobControl) => Promise<unknown>): JobInfo {
    if (this.stopping) throw new HindsightError('SHUTTING_DOWN', 'the daemon is stopping');
    const job: JobInfo = {
      id: randomUUID(), kind, subject, state: 'running', bytesDone: 0, bytesTotal: 0,
      startedAt: new Date().toISOString(), finishedAt: null, result: null, error: null,
    };
    this.jobs.set(job.id, job);
    const control: JobControl = {
      progress: (done, total) => {
        job.bytesDone = done;
        job.bytesTotal = total;
      },
      cancelled: () => this.stopping,
    };
    const run = work(control).then((result) => {
      job.state = 'done';
      job.result = result;
    }, (err: unknown) => {
      job.state = 'failed';
      job.error = err instanceof HindsightError ? err.toJSON() : { code: 'INTERNAL', message: (err as Error)?.message ?? String(err) };
    }).finally(() => {
      job.finishedAt = new Date().toISOString();
      this.running.delete(run);
      this.forgetOld();
    });
    this.running.add(run);
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

  /** Asks running jobs to stop and waits for them. */
  async stop(): Promise<void> {
    this.stopping = true;
    await Promise.allSettled([...this.running]);
  }

  private forgetOld(): void {
    const finished = [...this.jobs.values()].filter((job) => job.state !== 'running');
    for (const job of finished.slice(0, Math.max(0, finished.length - FINISHED_JOBS_KEPT))) this.jobs.delete(job.id);
  }
}
