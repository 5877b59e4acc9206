import { afterEach, beforeEach, expect, it } from 'vitest';
import { silentLogger } from '../../src/log/logger.js';
import { Checkpointer } from '../../src/store/sqlite/checkpointer.js';
import { outsideRead } from '../support/outside.js';
import { makeTestStore, type TestStore } from '../support/store.js';

let t: TestStore;
let checkpointer: Checkpointer | null = null;
beforeEach(async () => {
  t = await makeTestStore({ autoCheckpoint: false });
});
afterEach(async () => {
  await checkpointer?.stop();
  await t.cleanup();
});

/** Read by another process: reading the file from this one would drop the locks of its connections. */
const inMainFile = (marker: string) => outsideRead(t.options.path).includes(Buffer.from(marker));

it('copies the WAL into the database from a worker thread, not from the writer', async () => {
  // Enough writes that SQLite's own auto-checkpoint (1000 pages) would have run, were it on.
  for (let i = 0; i < 1500; i++) t.store.audit.record('login-failed', { username: `filler-${i}`, detail: 'x'.repeat(200) });
  t.store.accounts.add('checkpoint-marker');
  expect(inMainFile('checkpoint-marker')).toBe(false);
  let failed = false;
  checkpointer = new Checkpointer(t.options.path, 100, silentLogger(), () => (failed = true));
  checkpointer.start();
  const deadline = Date.now() + 5000;
  while (!inMainFile('checkpoint-marker') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  expect(inMainFile('checkpoint-marker')).toBe(true);
  expect(failed).toBe(false);
});
