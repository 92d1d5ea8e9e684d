/**
 * One daemon per data directory: DATA/daemon.pid is created exclusively; a file left by a
 * process that no longer exists is taken over.
 */
import fs from 'node:fs';
import path from 'node:path';
import { HindsightError, fromSystemError } from '../core/index.js';

export class DataDirLock {
  private constructor(private readonly file: string) {}

  static acquire(dataDir: string): DataDirLock {
    const file = path.join(dataDir, 'daemon.pid');
    for (let attempt = 0; attempt < 2; attempt += 1) {
      try {
        fs.writeFileSync(file, `${process.pid}\n`, { flag: 'wx' });
        return new DataDirLock(file);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw fromSystemError(err, `locking ${dataDir}`);
      }
      const holder = Number(fs.readFileSync(file, 'utf8').trim());
      if (Number.isInteger(holder) && holder > 0 && holder !== process.pid && isAlive(holder)) {
        throw new HindsightError('DATA_DIR_LOCKED', `data directory ${dataDir} is in use by another hindsight daemon (pid ${holder})`);
      }
      fs.rmSync(file, { force: true });
    }
    throw new HindsightError('DATA_DIR_LOCKED', `could not lock data directory ${dataDir}`);
  }

  release(): void {
    fs.rmSync(this.file, { force: true });
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
