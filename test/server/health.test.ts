/**
 * /healthz and /readyz on the metrics listener, with a real gateway in front
 * of a real Dovecot: ready when all is well; not ready, naming the check,
 * when the upstream stops answering, when the store cannot be written (a
 * lock held by another connection), when the master password is refused;
 * ready again once each is fixed. The gauges say the same.
 */
import { writeFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDovecot, type DovecotHandle } from '../support/dovecot.js';
import { startFaultProxy, type FaultProxy } from '../support/fault-proxy.js';
import { logLines, startGateway, type GatewayHandle } from '../support/gateway.js';
import { imaps } from '../support/imap-client.js';
import { waitUntil } from '../support/timing.js';

interface Answer {
  status: number;
  body: string;
}

interface ReadyBody {
  status: string;
  checks: Record<string, { state: string; detail: string; checkedAt: string | null }>;
}

/** The checks run every 200 ms here (every 10 s in production). */
const INTERVAL_MS = 200;

let dc: DovecotHandle;
let proxy: FaultProxy;
let gw: GatewayHandle;

function get(gateway: GatewayHandle, urlPath: string, method = 'GET'): Promise<Answer> {
  const address = gateway.gateway.metricsAddress!;
  return new Promise((resolve, reject) => {
    const req = http.request({ host: address.host, port: address.port, path: urlPath, method }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

async function readiness(gateway = gw): Promise<{ status: number; body: ReadyBody }> {
  const answer = await get(gateway, '/readyz');
  return { status: answer.status, body: JSON.parse(answer.body) as ReadyBody };
}

/** One sample of a metric, by name and labels as Prometheus prints them; undefined when absent. */
async function sample(name: string, gateway = gw): Promise<number | undefined> {
  const { body } = await get(gateway, '/metrics');
  const line = body.split('\n').find((l) => l.startsWith(`${name} `));
  return line === undefined ? undefined : Number(line.slice(name.length + 1));
}

/** Waits until /readyz answers `status` with `check` in `state` (and its detail matching); returns that answer. */
async function waitForReadiness(status: number, check: string, state: string, gateway = gw, detail = /./): Promise<ReadyBody> {
  let last: unknown;
  return waitUntil(
    async () => {
      const answer = await readiness(gateway);
      last = answer;
      const found = answer.body.checks[check];
      return answer.status === status && found?.state === state && detail.test(found.detail) ? answer.body : undefined;
    },
    `/readyz ${status} with ${check} ${state} (last: ${JSON.stringify(last)})`,
    10_000,
  );
}

function writeDovecotMasterPassword(password: string): void {
  // Dovecot's passwd-file is re-read when it changes; writing keeps its owner and mode.
  writeFileSync(path.join(dc.dir, 'etc', 'master-users'), `${dc.master.name}:{PLAIN}${password}\n`);
}

beforeAll(async () => {
  dc = await startDovecot();
  proxy = await startFaultProxy({ port: dc.imapPort });
  gw = await startGateway(dc, {
    upstreamImapPort: proxy.port,
    config: { metrics: { listen: '127.0.0.1:0' }, upstream: { login: { probe_account: 'alice' } } },
    healthIntervalMs: INTERVAL_MS,
  });
  gw.store.accounts.add('alice');
});

afterAll(async () => {
  await gw?.stop();
  await proxy?.close();
  await dc?.stop();
});

describe('health endpoints', () => {
  it('/healthz answers 200 while the process serves; other paths and methods are refused', async () => {
    // Catches: a health endpoint missing, or one that depends on the upstreams (a liveness probe
    // that fails with the mail server would have the orchestrator restart a healthy gateway).
    expect(await get(gw, '/healthz')).toMatchObject({ status: 200 });
    expect(JSON.parse((await get(gw, '/healthz')).body)).toEqual({ status: 'alive' });
    expect((await get(gw, '/healthz', 'HEAD')).status).toBe(200);
    expect((await get(gw, '/nope')).status).toBe(404);
    expect((await get(gw, '/readyz', 'POST')).status).toBe(405);
  });

  it('/readyz is 200 when the store, both upstreams and the master login work, and the gauges say 1', async () => {
    // Catches: readiness that never checks (always 200), or a check that never passes.
    const body = await waitForReadiness(200, 'master_login_pop3', 'ok');
    expect(body.status).toBe('ready');
    expect(Object.keys(body.checks).sort()).toEqual(['master_login_imap', 'master_login_pop3', 'store', 'upstream_imap', 'upstream_pop3']);
    for (const [name, check] of Object.entries(body.checks)) {
      expect(check.state, name).toBe('ok');
      expect(Date.now() - Date.parse(check.checkedAt!), name).toBeLessThan(5_000);
    }
    expect(body.checks.upstream_imap!.detail).toMatch(/starttls, certificate verified/);
    expect(body.checks.master_login_imap!.detail).toBe(`logged in as ${dc.master.name} for alice`);
    expect(await sample('mailgate_ready')).toBe(1);
    expect(await sample('mailgate_store_writable')).toBe(1);
    expect(await sample('mailgate_upstream_up{protocol="imap"}')).toBe(1);
    expect(await sample('mailgate_upstream_up{protocol="pop3"}')).toBe(1);
    expect(await sample('mailgate_master_login_up{protocol="imap"}')).toBe(1);
    // Dovecot saw the probe's logins for alice (as the master user: the gateway has no password of alice's).
    await dc.waitForLog(/imap-login: Info: Login: user=<alice>/);
    await dc.waitForLog(/pop3-login: Info: Login: user=<alice>/);
  });

  it('an upstream that stops answering: 503 naming it, its gauge 0, and ready again when it answers', async () => {
    // Catches: a readiness check that only opens TCP (the proxy accepts, nothing answers), or one
    // that looks at one upstream for both.
    await waitForReadiness(200, 'upstream_imap', 'ok');
    proxy.fault = { kind: 'silent' };
    try {
      const body = await waitForReadiness(503, 'upstream_imap', 'failing');
      expect(body.status).toBe('not ready');
      expect(body.checks.upstream_imap!.detail).toMatch(/did not answer in time/);
      expect(body.checks.upstream_pop3!.state).toBe('ok');
      expect(await sample('mailgate_upstream_up{protocol="imap"}')).toBe(0);
      expect(await sample('mailgate_upstream_up{protocol="pop3"}')).toBe(1);
      expect(await sample('mailgate_ready')).toBe(0);
      expect(logLines(gw, 'readiness check failing', { check: 'upstream_imap' })).not.toHaveLength(0);
    } finally {
      proxy.fault = { kind: 'pass' };
    }
    await waitForReadiness(200, 'master_login_imap', 'ok');
    expect(await sample('mailgate_upstream_up{protocol="imap"}')).toBe(1);
    expect(logLines(gw, 'readiness check passing again', { check: 'upstream_imap' })).not.toHaveLength(0);
  });

  it('a store that cannot be written (locked by another connection): 503 naming the store, and ready again on unlock', async () => {
    // Catches: a store check that only remembers the last login's write (nobody logs in here, so
    // the lock would go unseen), or one that reads (WAL readers are never blocked).
    await waitForReadiness(200, 'store', 'ok');
    const other = new Database(gw.config.store.path, { timeout: 100 });
    other.exec('BEGIN EXCLUSIVE');
    other.prepare('UPDATE accounts SET created_at = created_at WHERE username = ?').run('alice');
    try {
      const body = await waitForReadiness(503, 'store', 'failing');
      expect(body.checks.store!.detail).toMatch(/locked/);
      expect(await sample('mailgate_store_writable')).toBe(0);
    } finally {
      other.exec('ROLLBACK');
      other.close();
    }
    await waitForReadiness(200, 'store', 'ok');
    expect(await sample('mailgate_store_writable')).toBe(1);
  });

  it('a master password the mail server refuses: 503 naming the master login, and ready again when it matches', async () => {
    // Catches: a master-login check that never logs in (or treats any answer as success).
    await waitForReadiness(200, 'master_login_imap', 'ok');
    writeDovecotMasterPassword(`${dc.master.password}-changed`);
    try {
      const body = await waitForReadiness(503, 'master_login_imap', 'failing');
      await waitForReadiness(503, 'master_login_pop3', 'failing');
      expect(body.checks.master_login_imap!.detail).toMatch(/refused the master login/);
      expect(body.checks.upstream_imap!.state).toBe('ok');
      expect(await sample('mailgate_master_login_up{protocol="imap"}')).toBe(0);
    } finally {
      writeDovecotMasterPassword(dc.master.password);
    }
    await waitForReadiness(200, 'master_login_imap', 'ok');
    await waitForReadiness(200, 'master_login_pop3', 'ok');
  });

  it('a reload hands the checks the new probe account, or none', async () => {
    // Catches: readiness checks that keep the start's settings after a SIGHUP.
    await waitForReadiness(200, 'master_login_imap', 'ok');
    const withAccount = (account: string) => {
      const next = structuredClone(gw.config);
      next.upstream.login.probe_account = account;
      return next;
    };
    try {
      await gw.gateway.reload(withAccount(''));
      const skipped = await waitForReadiness(200, 'master_login_imap', 'skipped');
      expect(skipped.checks.master_login_pop3!.state).toBe('skipped');
      await gw.gateway.reload(withAccount('bob'));
      await waitForReadiness(200, 'master_login_pop3', 'ok', gw, /for bob$/);
    } finally {
      await gw.gateway.reload(withAccount('alice'));
    }
    await waitForReadiness(200, 'master_login_imap', 'ok', gw, /for alice$/);
  });

  it('argon2 verifications are a counter, and every mailgate metric is typed', async () => {
    // Catches: a total exported as a gauge (rate() on it is meaningless to Prometheus).
    const { body } = await get(gw, '/metrics');
    expect(body).toMatch(/^# TYPE mailgate_argon2_verifications_total counter$/m);
    expect(body).not.toMatch(/mailgate_argon2_verifications\{/);
    const types = [...body.matchAll(/^# TYPE (mailgate_\S+) (\S+)$/gm)].map((m) => [m[1]!, m[2]!] as const);
    for (const [name, type] of types) expect(type, name).toBe(name.endsWith('_total') ? 'counter' : 'gauge');
  });

  it('without a probe account the master login is skipped (and said so), and readiness rests on the rest', async () => {
    // Catches: a readiness check that logs in with some user's password, or that fails for good
    // when no probe account is configured.
    const other = await startGateway(dc, { config: { metrics: { listen: '127.0.0.1:0' } }, healthIntervalMs: INTERVAL_MS });
    try {
      const body = await waitForReadiness(200, 'upstream_imap', 'ok', other);
      expect(body.checks.master_login_imap).toMatchObject({ state: 'skipped', detail: expect.stringMatching(/probe_account is not set/) });
      expect(await sample('mailgate_master_login_up{protocol="imap"}', other)).toBeUndefined();
    } finally {
      await other.stop();
    }
  });

  it('shutting down: both endpoints say 503 "stopping" while sessions finish', async () => {
    // Catches: a load balancer that keeps sending clients to a gateway that no longer accepts them.
    const other = await startGateway(dc, { config: { metrics: { listen: '127.0.0.1:0' } }, healthIntervalMs: INTERVAL_MS });
    const client = await imaps(other);
    try {
      await waitForReadiness(200, 'store', 'ok', other);
      // An open session holds the shutdown in its grace period.
      const stopping = other.gateway.stop(2_000);
      expect(await get(other, '/healthz')).toEqual({ status: 503, body: expect.stringMatching(/"status": "stopping"/) });
      const ready = await readiness(other);
      expect(ready.status).toBe(503);
      expect(ready.body.status).toBe('stopping');
      expect(await sample('mailgate_ready', other)).toBe(0);
      await stopping;
    } finally {
      client.destroy();
      await other.stop();
    }
  });

  it('Dovecot stopped: 503 with both upstreams failing', async () => {
    // Last: the Dovecot of this file is gone afterwards.
    await waitForReadiness(200, 'upstream_pop3', 'ok');
    await dc.stop();
    // (A probe cut by the shutdown may fail with a reset first.)
    await waitForReadiness(503, 'upstream_pop3', 'failing', gw, /ECONNREFUSED/);
    await waitForReadiness(503, 'upstream_imap', 'failing');
    expect((await get(gw, '/healthz')).status).toBe(200);
  });
});
