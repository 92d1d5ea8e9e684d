/**
 * A private, frozen copy of the Hindsight build for one benchmark run. The repository's
 * dist/ is shared and may be rebuilt by someone else mid-run; every turn must run the same
 * code, so the daemon is started from this snapshot instead:
 *
 *   worktree  (default) compile the working tree's src/ into the snapshot; the repository's
 *             dist/ is left untouched
 *   head      compile the committed HEAD (git archive) into the snapshot: reproducible
 *   dist      copy the repository's current dist/ (whatever was built last)
 *
 * The snapshot holds package.json (ESM), bin/hindsight.js, dist/ and a node_modules link.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { runCommand } from './proc.js';

export const BUILD_MODES = ['dist', 'worktree', 'head'] as const;
export type BuildMode = (typeof BUILD_MODES)[number];

export interface HindsightSnapshot {
  /** Directory to start bin/hindsight.js from. */
  root: string;
  mode: BuildMode;
  gitHead: string;
  /** Uncommitted files under src/ when the snapshot was taken (worktree and dist modes). */
  dirtySrcFiles: string[];
  /** sha256 over the snapshot's dist/*.js: equal hashes mean the same code ran. */
  distSha256: string;
}

export async function prepareHindsight(repoDir: string, tmpRoot: string, mode: BuildMode): Promise<HindsightSnapshot> {
  const root = path.join(tmpRoot, 'hindsight-build');
  fs.mkdirSync(path.join(root, 'bin'), { recursive: true });
  fs.copyFileSync(path.join(repoDir, 'package.json'), path.join(root, 'package.json'));
  fs.copyFileSync(path.join(repoDir, 'bin', 'hindsight.js'), path.join(root, 'bin', 'hindsight.js'));
  fs.symlinkSync(path.join(repoDir, 'node_modules'), path.join(root, 'node_modules'));
  const git = (args: string[]) => runCommand('git', args, { cwd: repoDir, timeoutMs: 30_000 }).then((r) => r.stdout);
  const gitHead = (await git(['rev-parse', '--short', 'HEAD'])).trim();
  const dirtySrcFiles = (await git(['status', '--porcelain', '--', 'src'])).split('\n').filter(Boolean).map((l) => l.slice(3));
  const outDir = path.join(root, 'dist');
  const tsc = path.join(repoDir, 'node_modules', '.bin', 'tsc');
  if (mode === 'dist') {
    if (!fs.existsSync(path.join(repoDir, 'dist', 'cli', 'main.js'))) throw new Error('dist/ is missing: build first or use --build worktree|head');
    fs.cpSync(path.join(repoDir, 'dist'), outDir, { recursive: true });
  } else if (mode === 'worktree') {
    await runCommand(tsc, ['-p', path.join(repoDir, 'tsconfig.json'), '--outDir', outDir], { cwd: repoDir, timeoutMs: 300_000 });
  } else {
    const sourceDir = path.join(tmpRoot, 'hindsight-head-src');
    fs.mkdirSync(sourceDir);
    await runCommand('sh', ['-c', `git archive HEAD package.json src tsconfig.json | tar -x -C '${sourceDir}'`], { cwd: repoDir, timeoutMs: 60_000 });
    fs.symlinkSync(path.join(repoDir, 'node_modules'), path.join(sourceDir, 'node_modules'));
    await runCommand(tsc, ['-p', path.join(sourceDir, 'tsconfig.json'), '--outDir', outDir], { cwd: sourceDir, timeoutMs: 300_000 });
    fs.rmSync(sourceDir, { recursive: true, force: true });
  }
  return { root, mode, gitHead, dirtySrcFiles: mode === 'head' ? [] : dirtySrcFiles, distSha256: hashJsFiles(outDir) };
}

function hashJsFiles(dir: string): string {
  const hash = createHash('sha256');
  const files = (fs.readdirSync(dir, { recursive: true }) as string[]).filter((f) => f.endsWith('.js')).sort();
  for (const file of files) {
    hash.update(file);
    hash.update(fs.readFileSync(path.join(dir, file)));
  }
  return hash.digest('hex').slice(0, 16);
}
