/**
 * The self-service page's sessions, through the Store interface: timeouts,
 * listing without ids, ending them (one, all, all but one), and no way back
 * for an ended session, not even a save that was in flight.
 */
import { createHash, randomBytes } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ErrorCodes } from '../../src/errors.js';
import type { StoreChange } from '../../src/store/store.js';
import type { Account, WebSessionRecord } from '../../src/store/types.js';
import { ENGINES, makeEngineStore, manualClock, useEngine, type EngineStore } from '../support/store.js';

const clock = manualClock();
const MINUTE = 60_000;
const LIMITS = { idleMs: 30 * MINUTE, maxMs: 8 * 60 * MINUTE };

const newHash = () => createHash('sha256').update(randomBytes(32)).digest('hex');

describe.each(ENGINES)('WebSessionStore (%s)', (engine) => {
  useEngine(engine);
  let t: EngineStore;
  let alice: Account;

  beforeEach(async () => {
    clock.set(Date.UTC(2026, 10, 25, 12, 0, 0));
    t = await makeEngineStore(engine, { now: clock.now });
    alice = await t.api.accounts.add('alice');
    await t.api.accounts.add('bob');
  });
  afterEach(() => t.cleanup());

  function session(overrides: Partial<WebSessionRecord> = {}): WebSessionRecord {
    return {
      idHash: newHash(),
      accountId: alice.id,
      createdAt: clock.now(),
      lastSeenAt: clock.now(),
      passwordAt: clock.now(),
      ip: '192.0.2.1',
      userAgent: 'Firefox/140.0',
      data: '{"csrf":"x"}',
      ...overrides,
    };
  }

  async function saved(overrides: Partial<WebSessionRecord> = {}): Promise<WebSessionRecord> {
    const record = session(overrides);
    await t.api.webSessions.save(record);
    return record;
  }

  const liveRows = async () => (await t.rows('SELECT id_hash FROM web_sessions WHERE ended_at IS NULL')).length;

  it('saves and gets a session; an update keeps its creation time', async () => {
    const anonymous = await saved({ accountId: null, passwordAt: null });
    expect(await t.api.webSessions.get(anonymous.idHash, LIMITS)).toEqual(anonymous);
    expect(await t.api.webSessions.get(newHash(), LIMITS)).toBeNull();
    clock.advance(MINUTE);
    // Signed in: the web layer saves the same id with the account, later times and its data.
    const signedIn = { ...anonymous, accountId: alice.id, createdAt: clock.now(), lastSeenAt: clock.now(), passwordAt: clock.now(), data: '{"n":2}' };
    await t.api.webSessions.save(signedIn);
    // Catches: a save that moves created_at, which would let any update stretch the absolute timeout.
    expect(await t.api.webSessions.get(anonymous.idHash, LIMITS)).toEqual({ ...signedIn, createdAt: anonymous.createdAt });
  });

  it('ends a session idle for longer than idleMs, or older than maxMs, when it is next looked at', async () => {
    const idle = await saved();
    const busy = await saved();
    clock.advance(LIMITS.idleMs);
    // Exactly at the limit is still in time.
    expect(await t.api.webSessions.get(idle.idHash, LIMITS)).not.toBeNull();
    await t.api.webSessions.save({ ...busy, lastSeenAt: clock.now() });
    clock.advance(1);
    expect(await t.api.webSessions.get(idle.idHash, LIMITS)).toBeNull();
    expect(await t.api.webSessions.get(busy.idHash, LIMITS)).not.toBeNull();
    // Kept busy, it still ends at the absolute timeout.
    while (clock.now() - busy.createdAt <= LIMITS.maxMs) {
      await t.api.webSessions.save({ ...busy, lastSeenAt: clock.now() });
      expect(await t.api.webSessions.get(busy.idHash, LIMITS)).not.toBeNull();
      clock.advance(10 * MINUTE);
    }
    await t.api.webSessions.save({ ...busy, lastSeenAt: clock.now() });
    expect(await t.api.webSessions.get(busy.idHash, LIMITS)).toBeNull();
    // Ended, not just hidden: a save in flight does not bring either back.
    await t.api.webSessions.save({ ...idle, lastSeenAt: clock.now() });
    expect(await t.api.webSessions.get(idle.idHash, { idleMs: Infinity, maxMs: Infinity })).toBeNull();
    expect(await t.api.webSessions.list('alice')).toEqual([]);
  });

  it('lists the live sessions of an account, newest first, without ids or hashes', async () => {
    const first = await saved({ ip: '192.0.2.1' });
    clock.advance(MINUTE);
    await saved({ ip: '2001:db8::1', userAgent: null, passwordAt: null });
    await saved({ accountId: (await t.api.accounts.get('bob')).id });
    await saved({ accountId: null });
    const listed = await t.api.webSessions.list('ALICE');
    expect(listed).toEqual([
      { createdAt: first.createdAt + MINUTE, lastSeenAt: first.createdAt + MINUTE, passwordAt: null, ip: '2001:db8::1', userAgent: null },
      { createdAt: first.createdAt, lastSeenAt: first.createdAt, passwordAt: first.createdAt, ip: '192.0.2.1', userAgent: 'Firefox/140.0' },
    ]);
    expect(JSON.stringify(listed)).not.toContain(first.idHash);
    await expect(t.api.webSessions.list('nobody')).rejects.toMatchObject({ code: ErrorCodes.UNKNOWN_ACCOUNT });
  });

  it('destroy ends one session for good', async () => {
    const one = await saved();
    const two = await saved();
    await t.api.webSessions.destroy(one.idHash);
    await t.api.webSessions.destroy(newHash());
    expect(await t.api.webSessions.get(one.idHash, LIMITS)).toBeNull();
    expect(await t.api.webSessions.get(two.idHash, LIMITS)).not.toBeNull();
    // Catches: a destroy that deletes the row, so the request that signed out, saving on its way out, signs back in.
    await t.api.webSessions.save(one);
    expect(await t.api.webSessions.get(one.idHash, LIMITS)).toBeNull();
    // What is left of it tells nothing about its user.
    const [row] = await t.rows('SELECT data, ip, user_agent FROM web_sessions WHERE id_hash = ?', [one.idHash]);
    expect(row).toEqual({ data: '{}', ip: null, user_agent: null });
  });

  it('endAll ends the account\'s sessions but the one kept, audited with the count and announced; nothing to end, nothing said', async () => {
    const changes: StoreChange[] = [];
    t.api.onChange((change) => changes.push(change));
    const kept = await saved();
    const others = [await saved(), await saved()];
    const bobs = await saved({ accountId: (await t.api.accounts.get('bob')).id });
    expect(await t.api.webSessions.endAll('alice', { except: kept.idHash })).toBe(2);
    for (const other of others) expect(await t.api.webSessions.get(other.idHash, LIMITS)).toBeNull();
    expect(await t.api.webSessions.get(kept.idHash, LIMITS)).not.toBeNull();
    expect(await t.api.webSessions.get(bobs.idHash, LIMITS)).not.toBeNull();
    // A save in flight from an ended session does not bring it back.
    await t.api.webSessions.save({ ...others[0]!, lastSeenAt: clock.now() });
    expect(await t.api.webSessions.get(others[0]!.idHash, LIMITS)).toBeNull();
    expect(await t.api.webSessions.list('alice')).toHaveLength(1);

    expect(await t.api.webSessions.endAll('alice')).toBe(1);
    expect(await t.api.webSessions.endAll('alice')).toBe(0);
    const ended = (await t.api.audit.list({ username: 'alice' })).filter((r) => r.event === 'web-sessions-ended');
    expect(ended.map((r) => r.detail)).toEqual(['1', '2']);
    expect(changes).toEqual([
      { kind: 'web-sessions', username: 'alice' },
      { kind: 'web-sessions', username: 'alice' },
    ]);
    await expect(t.api.webSessions.endAll('nobody')).rejects.toMatchObject({ code: ErrorCodes.UNKNOWN_ACCOUNT });
  });

  it("removing the account ends its sessions; a late save cannot give one to a new account that gets the same id", async () => {
    const changes: StoreChange[] = [];
    t.api.onChange((change) => changes.push(change));
    const carol = await t.api.accounts.add('carol');
    const hers = await saved({ accountId: carol.id });
    await t.api.accounts.remove('carol');
    expect(await t.api.webSessions.get(hers.idHash, LIMITS)).toBeNull();
    expect(changes.map((c) => c.kind)).toEqual(['account', 'web-sessions', 'account']);
    // SQLite gives the next account the highest id plus one: carol's again (PostgreSQL's identity never reuses one).
    const dave = await t.api.accounts.add('dave');
    if (engine === 'sqlite') expect(dave.id).toBe(carol.id);
    await t.api.webSessions.save({ ...hers, lastSeenAt: clock.now() });
    expect(await t.api.webSessions.get(hers.idHash, LIMITS)).toBeNull();
    expect(await t.api.webSessions.list('dave')).toEqual([]);
  });

  it('a save for an account that is gone stores nothing and fails nothing (logins stay open)', async () => {
    const carol = await t.api.accounts.add('carol');
    await t.api.accounts.remove('carol');
    const orphan = session({ accountId: carol.id });
    await t.api.webSessions.save(orphan);
    expect(await t.api.webSessions.get(orphan.idHash, LIMITS)).toBeNull();
    await t.api.writable();
  });

  it('prune drops sessions, live or ended, created more than maxMs ago', async () => {
    const old = await saved();
    const ended = await saved();
    await t.api.webSessions.destroy(ended.idHash);
    clock.advance(LIMITS.maxMs);
    const recent = await saved();
    expect(await t.api.prune({ penaltiesOlderThanMs: 0, auditMaxAgeMs: 0 })).toEqual({ penalties: 0, audit: 0, webSessions: 0 });
    clock.advance(1);
    expect(await t.api.prune({ penaltiesOlderThanMs: 0, auditMaxAgeMs: 0, webSessions: LIMITS })).toEqual({ penalties: 0, audit: 0, webSessions: 2 });
    expect(await t.api.webSessions.get(recent.idHash, LIMITS)).not.toBeNull();
    expect(await t.api.webSessions.get(old.idHash, LIMITS)).toBeNull();
    expect(await liveRows()).toBe(1);
  });

  it('prune drops sessions unused for longer than idleMs (page views that never signed in), and list shows only live ones', async () => {
    // Catches: anonymous sessions (a CSRF secret per page view) piling up for hours under a flood.
    const account = await t.api.accounts.add('erin');
    const viewed = await saved({ accountId: null, passwordAt: null });
    const busy = await saved({ accountId: account.id });
    clock.advance(LIMITS.idleMs - 1);
    await t.api.webSessions.save({ ...busy, lastSeenAt: clock.now() });
    clock.advance(2);
    expect(await t.api.webSessions.list('erin', LIMITS)).toHaveLength(1);
    expect(await t.api.prune({ penaltiesOlderThanMs: 0, auditMaxAgeMs: 0, webSessions: LIMITS })).toEqual({ penalties: 0, audit: 0, webSessions: 1 });
    expect(await t.api.webSessions.get(viewed.idHash, LIMITS)).toBeNull();
    expect(await t.api.webSessions.get(busy.idHash, LIMITS)).not.toBeNull();
    clock.advance(LIMITS.idleMs + 1);
    expect(await t.api.webSessions.list('erin', LIMITS)).toEqual([]);
    expect(await t.api.webSessions.list('erin')).toHaveLength(1);
  });
});
