#!/usr/bin/env node
// Entry point installed as `hindsight`; the code lives in dist/ (built from src/ by `npm run build`).
import { main } from '../dist/cli/main.js';

main(process.argv).then(
  (code) => { process.exitCode = code; },
  (err) => { process.stderr.write(`hindsight: ${err?.message ?? err}\n`); process.exitCode = 1; },
);
