import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AbuseGuard, type AbuseRules } from '../../src/auth/abuse.js';
import { silentLogger } from '../../src/log/logger.js';
import { makeTestStore, manualClock, type TestStore } from '../support/store.js';

const clock = manualClock();
let t: TestStore;
const rules: AbuseRules = {
  ip: { windowMs: 600_000, blockAfter: 5, blockMs: 900_000 },
  account: { windowMs: 600_000, blockAfter: 8, blockMs: 900_000 },
  delayBaseMs: 2000,
  delayMaxMs: 15_000,
  maxConcurrentPerClient: 2,
};
let guard: AbuseGuard;

beforeEach(async () => {
  clock.set(Date.UTC(2026, 10, 25, 12, 0, 0));
  t = await makeTestStore({ now: clock.now });
  guard = new AbuseGuard(t.api, rules, silentLogger(), clock.now);
});
afterEach(() => t.cleanup());

const pw = (s: string) => Buffer.from(s);

describe('AbuseGuard', () => {
  it('grows the delay 2 s, 4 s, 8 s, then caps it at 15 s', async () => {
    const delays: number[] = [];
    for (const i of [1, 2, 3, 4, 5]) delays.push(await guard.recordFailure('198.51.100.1', 'alice', pw(`wrong-${i}`)));
    expect(delays).toEqual([2000, 4000, 8000, 15_000, 15_000]);
  });

  it('blocks a client past the threshold, without looking at credentials', async () => {
    for (let i = 0; i < 5; i++) await guard.recordFailure('198.51.100.1', `user${i}`, pw(`pw${i}`));
    expect(await guard.admit('198.51.100.1', 'anyone', pw('x'))).toEqual({ ok: false, blockedBy: 'ip' });
    const other = await guard.admit('198.51.100.2', 'anyone', pw('x'));
    expect(other.ok).toBe(true);
    if (other.ok) other.release();
    // The block lifts by itself.
    clock.advance(900_001);
    const later = await guard.admit('198.51.100.1', 'anyone', pw('x'));
    expect(later.ok).toBe(true);
  });

  it('does not escalate for the same wrong password repeated (a stale saved password)', async () => {
    for (let i = 0; i < 20; i++) await guard.recordFailure('198.51.100.1', 'alice', pw('old-password'));
    expect(t.store.penalties.get('account', 'alice', rules.account.windowMs).failures).toBe(1);
    expect(t.store.penalties.get('ip', '198.51.100.1', rules.ip.windowMs).failures).toBe(1);
    expect(t.store.penalties.get('ip', '198.51.100.1', rules.ip.windowMs).blockedUntil).toBeNull();
  });

  it('blocks an account for every client, but lets a clean client try an app password, and only that', async () => {
    for (let i = 0; i < 8; i++) await guard.recordFailure(`203.0.113.${i}`, 'alice', pw(`guess-${i}`));
    expect(t.store.penalties.get('account', 'alice', rules.account.windowMs).blockedUntil).not.toBeNull();
    const appPassword = pw('abcd efgh ijkl mnop');
    // An attacker address with failures is turned away, even with something shaped like an app password...
    expect(await guard.admit('203.0.113.1', 'Alice', appPassword)).toEqual({ ok: false, blockedBy: 'account' });
    // ...and a clean address is too, for anything that is not an app password: a main password
    // (checked by the upstream under passthrough) is not a free guess from each new address.
    expect(await guard.admit('192.0.2.50', 'alice', pw('alice-main-password'))).toEqual({ ok: false, blockedBy: 'account' });
    expect(await guard.admit('192.0.2.50', 'alice', pw('abcdefghijklmno'))).toEqual({ ok: false, blockedBy: 'account' });
    // The owner on a clean address still gets an app password checked, against app passwords only.
    for (const typed of [appPassword, pw('ABCDEFGHIJKLMNOP')]) {
      const owner = await guard.admit('192.0.2.50', 'alice', typed);
      expect(owner).toMatchObject({ ok: true, appPasswordsOnly: true });
      if (owner.ok) owner.release();
    }
    // An account that is not blocked: nothing is restricted.
    const other = await guard.admit('192.0.2.50', 'bob', pw('bob-main-password'));
    expect(other).toMatchObject({ ok: true, appPasswordsOnly: false });
    if (other.ok) other.release();
  });

  it('counts an IPv6 /64 as one client', async () => {
    for (let i = 0; i < 5; i++) await guard.recordFailure('2001:db8:1:2::/64', `u${i}`, pw(`p${i}`));
    expect((await guard.admit('2001:db8:1:2::/64', 'x', pw('x'))).ok).toBe(false);
  });

  it('lets only a few checks per client run at once; the rest wait their turn', async () => {
    const a = await guard.admit('198.51.100.9', 'a', pw('x'));
    const b = await guard.admit('198.51.100.9', 'b', pw('x'));
    let thirdAdmitted = false;
    const third = guard.admit('198.51.100.9', 'c', pw('x')).then((r) => {
      thirdAdmitted = true;
      return r;
    });
    await new Promise((r) => setTimeout(r, 20));
    expect(thirdAdmitted).toBe(false);
    // Another client is not held up.
    const other = await guard.admit('198.51.100.10', 'x', pw('x'));
    expect(other.ok).toBe(true);
    if (a.ok) a.release();
    const c = await third;
    expect(c.ok).toBe(true);
    if (b.ok) b.release();
    if (c.ok) c.release();
  });

  it('forgets failures after the window', async () => {
    await guard.recordFailure('198.51.100.1', 'alice', pw('a'));
    await guard.recordFailure('198.51.100.1', 'alice', pw('b'));
    clock.advance(600_000);
    expect(await guard.recordFailure('198.51.100.1', 'alice', pw('c'))).toBe(2000);
  });

  it('keeps counters in the database, where the CLI can list and clear them', async () => {
    for (let i = 0; i < 5; i++) await guard.recordFailure('198.51.100.1', 'bob', pw(`p${i}`));
    const other = t.reopen({ now: clock.now });
    expect(other.penalties.activeBlocks().map((b) => `${b.kind}:${b.key}`)).toEqual(['ip:198.51.100.1']);
    expect(other.penalties.clear('198.51.100.1')).toBe(1);
    expect(t.store.penalties.activeBlocks()).toEqual([]);
  });
});

describe('AbuseGuard: repeats per client address', () => {
  const repeatRules: AbuseRules = { ...rules, ip: { ...rules.ip, repeatBlockAfter: 4 } };

  it('counts each repeat for the client, and blocks it at the repeat threshold, not the account', async () => {
    // Catches: repeats free forever for one address (a storm repeating one guess is never stopped),
    // and repeats that block the account (a stale phone would lock its owner out).
    const g = new AbuseGuard(t.api, repeatRules, silentLogger(), clock.now);
    for (let i = 0; i < 4; i++) await g.recordFailure('198.51.100.7', 'alice', pw('old-password'));
    const ip = t.store.penalties.get('ip', '198.51.100.7', rules.ip.windowMs);
    expect(ip).toMatchObject({ failures: 1, repeats: 3, blockedUntil: null });
    await g.recordFailure('198.51.100.7', 'alice', pw('old-password'));
    expect(t.store.penalties.get('ip', '198.51.100.7', rules.ip.windowMs).blockedUntil).toBe(clock.now() + rules.ip.blockMs);
    expect(t.store.penalties.get('account', 'alice', rules.account.windowMs)).toMatchObject({ failures: 1, repeats: 0, blockedUntil: null });
    expect(await g.admit('198.51.100.7', 'bob', pw('x'))).toEqual({ ok: false, blockedBy: 'ip' });
  });

  it('counts a failure from outside the network (the CLI) against the account only, and tells whether it is blocked', async () => {
    const g = new AbuseGuard(t.api, rules, silentLogger(), clock.now);
    for (let i = 0; i < rules.account.blockAfter; i++) await g.recordFailure(null, 'carol', pw(`code-${i}`));
    expect(await g.accountBlocked('carol')).toBe(true);
    expect(await g.accountBlocked('Carol ')).toBe(true);
    expect(await g.accountBlocked('dave')).toBe(false);
    expect(t.store.penalties.all().filter((p) => p.kind === 'ip')).toEqual([]);
  });

  it('a block it starts is announced by the store, so the revocation watcher looks at once', async () => {
    const g = new AbuseGuard(t.api, rules, silentLogger(), clock.now);
    const started: string[] = [];
    t.api.onChange((change) => started.push(change.kind));
    for (let i = 0; i < rules.ip.blockAfter; i++) await g.recordFailure('198.51.100.8', `user${i}`, pw(`pw${i}`));
    expect(started).toEqual(['block']);
  });
});
