/**
 * Group commit: many callers ask for "everything so far is durable", one sync serves them
 * all. A request that arrives while a sync runs waits for the next sync (the running one may
 * not cover writes made after it started); every request arriving meanwhile shares that one.
 */
export class GroupCommit {
  private running: Promise<void> | null = null;
  private queued: Promise<void> | null = null;

  constructor(private readonly syncOnce: () => Promise<void>) {}

  request(): Promise<void> {
    if (this.running === null) {
      this.running = this.syncOnce().finally(() => {
        this.running = null;
      });
      return this.running;
    }
    if (this.queued === null) {
      this.queued = this.running.catch(() => undefined).then(() => {
        this.queued = null;
        return this.request();
      });
    }
    return this.queued;
  }
}
