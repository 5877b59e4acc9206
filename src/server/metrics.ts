/**
 * Prometheus metrics (prom-client), served over HTTP when `[metrics] listen`
 * is set: the process defaults (memory, event-loop lag) plus what an operator
 * watches on an auth gateway: sessions, logins by result, refusals, hashing.
 * The endpoint has no authentication, so bind it to loopback or a private
 * network.
 */
import http from 'node:http';
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { Logger } from '../log/logger.js';

export type LoginResult = 'ok' | 'failed' | 'temporary' | 'blocked';

/** Event-loop sampling period: fine enough to see 20 ms stalls, cheap enough to leave on. */
const LOOP_SAMPLE_MS = 10;

export class Metrics {
  readonly registry = new Registry();
  readonly logins: Counter<'protocol' | 'result'>;
  readonly refusedConnections: Counter<'reason'>;
  readonly loginCache: Counter<'result'>;
  private server: http.Server | null = null;
  private readonly loopDelay: IntervalHistogram;

  constructor(sources: {
    sessions: () => { prelogin: number; relaying: number };
    argon2: () => { verifications: number; running: number; queued: number };
    /** The certificates served now (a reload changes them): their files and when they expire (ms since the epoch). */
    certificates: () => ReadonlyArray<{ file: string; notAfter: number }>;
  }) {
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
    new Gauge({
      name: 'mailgate_argon2_verifications',
      help: 'argon2 verifications: total since start, running now, queued now',
      labelNames: ['kind'],
      registers: [this.registry],
      collect() {
        const stats = sources.argon2();
        this.set({ kind: 'total' }, stats.verifications);
        this.set({ kind: 'running' }, stats.running);
        this.set({ kind: 'queued' }, stats.queued);
      },
    });
  }

  /** Serves GET /metrics on `address` ("host:port"). */
  listen(address: string, log: Logger): Promise<{ host: string; port: number }> {
    const at = address.lastIndexOf(':');
    const host = address.slice(0, at).replace(/^\[|\]$/g, '');
    const port = Number(address.slice(at + 1));
    this.server = http.createServer((req, res) => {
      if (req.method !== 'GET' || req.url !== '/metrics') {
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

  close(): Promise<void> {
    this.loopDelay.disable();
    const server = this.server;
    this.server = null;
    return new Promise((resolve) => (server ? server.close(() => resolve()) : resolve()));
  }
}
