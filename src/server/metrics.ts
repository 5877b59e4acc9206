/**
 * Prometheus metrics (prom-client), served over HTTP when `[metrics] listen`
 * is set: the process defaults (memory, event-loop lag) plus what an operator
 * watches on an auth gateway: sessions, logins by result, refusals, hashing,
 * and the readiness checks' states. The same listener answers the health
 * checks of load balancers and orchestrators: /healthz (the process is alive
 * and serving) and /readyz (every readiness check passes; see health.ts).
 * The endpoint has no authentication, so bind it to loopback or a private
 * network.
 */
import http from 'node:http';
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { Logger } from '../log/logger.js';
import type { Readiness } from './health.js';

export type LoginResult = 'ok' | 'failed' | 'temporary' | 'blocked';

/** The readiness checks, as the endpoints and gauges read them (HealthMonitor). */
export interface ReadinessSource {
  readiness(): Readiness;
  /** 1 passing, 0 not, null skipped or absent. */
  up(check: string): 0 | 1 | null;
}

export interface MetricsSources {
  sessions: () => { prelogin: number; relaying: number };
  argon2: () => { verifications: number; running: number; queued: number };
  /** The certificates served now (a reload changes them): their files and when they expire (ms since the epoch). */
  certificates: () => ReadonlyArray<{ file: string; notAfter: number }>;
  health: ReadinessSource;
}

/** Event-loop sampling period: fine enough to see 20 ms stalls, cheap enough to leave on. */
const LOOP_SAMPLE_MS = 10;

export class Metrics {
  readonly registry = new Registry();
  readonly logins: Counter<'protocol' | 'result'>;
  readonly refusedConnections: Counter<'reason'>;
  readonly loginCache: Counter<'result'>;
  private server: http.Server | null = null;
  private readonly loopDelay: IntervalHistogram;
  private readonly health: ReadinessSource;
  /** Set when the gateway starts shutting down: both health endpoints answer 503 from then on. */
  private stopping = false;

  constructor(sources: MetricsSources) {
    this.health = sources.health;
    collectDefaultMetrics({ register: this.registry });
    // Node's histogram records the whole interval between samples, so its
    // values include the sampling period itself (prom-client's
    // nodejs_eventloop_lag_* read about 10 ms on an idle loop). This gauge
    // subtracts it: it is how late the loop ran, reset at every scrape.
    this.loopDelay = monitorEventLoopDelay({ resolution: LOOP_SAMPLE_MS });
    this.loopDelay.enable();
    const loopDelay = this.loopDelay;
    new Gauge({
      name: 'mailgate_event_loop_delay_seconds',
      help: 'How late the event loop ran since the previous scrape (sampling period removed)',
      labelNames: ['quantile'],
      registers: [this.registry],
      collect() {
        const late = (ns: number) => Math.max(0, ns / 1e9 - LOOP_SAMPLE_MS / 1000);
        this.set({ quantile: '0.5' }, late(loopDelay.percentile(50)));
        this.set({ quantile: '0.99' }, late(loopDelay.percentile(99)));
        this.set({ quantile: '1' }, late(loopDelay.max));
        loopDelay.reset();
      },
    });
    this.logins = new Counter({ name: 'mailgate_logins_total', help: 'Login attempts by protocol and result', labelNames: ['protocol', 'result'], registers: [this.registry] });
    this.refusedConnections = new Counter({ name: 'mailgate_connections_refused_total', help: 'Connections refused by a limit', labelNames: ['reason'], registers: [this.registry] });
    this.loginCache = new Counter({ name: 'mailgate_login_cache_total', help: 'Verified-login cache lookups by result', labelNames: ['result'], registers: [this.registry] });
    new Gauge({
      name: 'mailgate_sessions',
      help: 'Open sessions by state',
      labelNames: ['state'],
      registers: [this.registry],
      collect() {
        const counts = sources.sessions();
        this.set({ state: 'prelogin' }, counts.prelogin);
        this.set({ state: 'relaying' }, counts.relaying);
      },
    });
    new Gauge({
      name: 'mailgate_tls_certificate_expiry_seconds',
      help: 'Seconds until each served TLS certificate expires (negative once expired), by certificate file',
      labelNames: ['file'],
      registers: [this.registry],
      collect() {
        // Reset first: a reload may have dropped a certificate, whose series must go with it.
        this.reset();
        const now = Date.now();
        for (const { file, notAfter } of sources.certificates()) this.set({ file }, Math.round((notAfter - now) / 1000));
      },
    });
    // The hasher counts; the counter takes what was added since the last scrape, so it only ever goes up.
    let verificationsSeen = 0;
    new Counter({
      name: 'mailgate_argon2_verifications_total',
      help: 'argon2 verifications since start',
      registers: [this.registry],
      collect() {
        const total = sources.argon2().verifications;
        if (total > verificationsSeen) this.inc(total - verificationsSeen);
        verificationsSeen = total;
      },
    });
    new Gauge({
      name: 'mailgate_argon2_running',
      help: 'argon2 verifications running now',
      registers: [this.registry],
      collect() {
        this.set(sources.argon2().running);
      },
    });
    new Gauge({
      name: 'mailgate_argon2_queued',
      help: 'argon2 verifications waiting for a hashing slot now',
      registers: [this.registry],
      collect() {
        this.set(sources.argon2().queued);
      },
    });
    this.readinessGauges(sources.health);
  }

  /** The readiness checks' states as gauges (1 passing, 0 not); a check that does not run has no sample. */
  private readinessGauges(health: ReadinessSource): void {
    const perProtocol = (name: string, help: string, check: (protocol: string) => string) =>
      new Gauge({
        name,
        help,
        labelNames: ['protocol'],
        registers: [this.registry],
        collect() {
          this.reset();
          for (const protocol of ['imap', 'pop3']) {
            const up = health.up(check(protocol));
            if (up !== null) this.set({ protocol }, up);
          }
        },
      });
    perProtocol('mailgate_upstream_up', 'The upstream of this protocol can be reached with its TLS settings (1) or not (0)', (p) => `upstream_${p}`);
    perProtocol('mailgate_master_login_up', 'The master login for upstream.login.probe_account works on this protocol (1) or not (0)', (p) => `master_login_${p}`);
    new Gauge({
      name: 'mailgate_store_writable',
      help: 'The store can be written (1) or not (0)',
      registers: [this.registry],
      collect() {
        this.set(health.up('store') ?? 0);
      },
    });
    const stopping = () => this.stopping;
    new Gauge({
      name: 'mailgate_ready',
      help: 'Every readiness check passes, as /readyz says (1) or not (0)',
      registers: [this.registry],
      collect() {
        this.set(!stopping() && health.readiness().ready ? 1 : 0);
      },
    });
  }

  /** From now on /healthz and /readyz answer 503, so load balancers stop sending clients (shutdown). */
  markStopping(): void {
    this.stopping = true;
  }

  /** Serves GET /metrics, /healthz and /readyz on `address` ("host:port"). */
  listen(address: string, log: Logger): Promise<{ host: string; port: number }> {
    const at = address.lastIndexOf(':');
    const host = address.slice(0, at).replace(/^\[|\]$/g, '');
    const port = Number(address.slice(at + 1));
    this.server = http.createServer((req, res) => {
      const path = (req.url ?? '').split('?')[0];
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        res.writeHead(405, { allow: 'GET, HEAD' }).end();
        return;
      }
      if (path === '/healthz') return this.answerHealth(res);
      if (path === '/readyz') return this.answerReadiness(res);
      if (path !== '/metrics') {
        res.writeHead(404).end();
        return;
      }
      this.registry.metrics().then(
        (body) => res.writeHead(200, { 'content-type': this.registry.contentType }).end(body),
        (err: unknown) => {
          log.warn({ err }, 'metrics collection failed');
          res.writeHead(500).end();
        },
      );
    });
    const server = this.server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host, port }, () => {
        const bound = server.address() as { address: string; port: number };
        log.info({ host: bound.address, port: bound.port }, 'metrics listening');
        resolve({ host: bound.address, port: bound.port });
      });
    });
  }

  /** Alive: this process runs its event loop and answers (it is what answers). */
  private answerHealth(res: http.ServerResponse): void {
    json(res, this.stopping ? 503 : 200, { status: this.stopping ? 'stopping' : 'alive' });
  }

  /** Ready: every readiness check passes now; the body says each check's state. */
  private answerReadiness(res: http.ServerResponse): void {
    const { ready, checks } = this.health.readiness();
    const status = this.stopping ? 'stopping' : ready ? 'ready' : 'not ready';
    json(res, status === 'ready' ? 200 : 503, { status, checks });
  }

  close(): Promise<void> {
    this.loopDelay.disable();
    const server = this.server;
    this.server = null;
    return new Promise((resolve) => (server ? server.close(() => resolve()) : resolve()));
  }
}

function json(res: http.ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' }).end(`${JSON.stringify(body, null, 2)}\n`);
}
