import { afterEach, beforeEach, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { silentLogger } from '../../src/log/logger.js';
import { Housekeeping } from '../../src/server/housekeeping.js';
import { makeTestStore, manualClock, type TestStore } from '../support/store.js';

const clock = manualClock();
let t: TestStore;
beforeEach(async () => {
  clock.set(Date.UTC(2026, 10, 25, 12, 0, 0));
  t = await makeTestStore({ now: clock.now });
});
afterEach(() => t.cleanup());

it('removes failure counters whose window and block are over, and audit events past their retention', async () => {
  const config = parseConfig({ store: { audit_retention_days: 30 } }, 'test');
  const rules = { windowMs: 600_000, blockAfter: 10, blockMs: 900_000 };
  t.store.penalties.recordFailure('ip', '192.0.2.1', rules);
  t.store.audit.record('login-failed', { username: 'old' });
  clock.advance(31 * 86_400_000);
  t.store.penalties.recordFailure('ip', '192.0.2.2', rules);
  t.store.audit.record('login-failed', { username: 'recent' });
  const housekeeping = new Housekeeping(t.api, config, silentLogger());
  expect(await housekeeping.run()).toEqual({ penalties: 1, audit: 1, webSessions: 0 });
  expect(t.store.penalties.all().map((p) => p.key)).toEqual(['192.0.2.2']);
  expect(t.store.audit.list().map((a) => a.username)).toEqual(['recent']);
});

it('keeps the audit trail forever with a retention of 0', async () => {
  const config = parseConfig({ store: { audit_retention_days: 0 } }, 'test');
  t.store.audit.record('login-failed', { username: 'old' });
  clock.advance(3650 * 86_400_000);
  const housekeeping = new Housekeeping(t.api, config, silentLogger());
  expect((await housekeeping.run()).audit).toBe(0);
  expect(t.store.audit.list()).toHaveLength(1);
});
