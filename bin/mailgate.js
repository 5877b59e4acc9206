#!/usr/bin/env node
// The compiled CLI lives in dist/ (built by `npm ci` through the prepare script).
import { availableParallelism } from 'node:os';

// argon2 hashes on libuv's thread pool, which DNS lookups and file I/O share.
// The pool is created on first use, so its size must be set before anything
// runs: room for one hash per core but one (the default hash concurrency),
// plus threads left for everything else.
process.env.UV_THREADPOOL_SIZE ??= String(Math.max(4, availableParallelism() + 2));

await import('../dist/cli/main.js');
