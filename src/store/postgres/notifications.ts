/**
 * Other nodes' changes, heard at once: a dedicated connection LISTENs on
 * `mailgate_changes` and hands each notification of another node to the
 * store's onChange listeners. When the connection drops (the server
 * restarted, a DBA ended it), it reconnects with a growing delay (a quarter
 * second, doubling, at most postgres_listen_retry_max_seconds); meanwhile
 * the revocation watcher's polling of the change token keeps its promise.
 */
import pg from 'pg';
import { FIXED_LIMITS } from '../../config/limits.js';
import { errorMessage } from '../../errors.js';
import type { Logger } from '../../log/logger.js';
import type { StoreChange } from '../store.js';
import { CHANNEL, connectionConfig, type ChangeMessage, type PostgresOptions } from './database.js';

const FIRST_RETRY_MS = 250;
/** How often the LISTEN connection is asked whether it is still there. */
const HEARTBEAT_MS = 10_000;
const KINDS: ReadonlySet<string> = new Set<StoreChange['kind']>(['account', 'app-password', 'totp', 'block', 'penalties-cleared', 'web-sessions']);

export interface ListenerEvents {
  /** Another node's change. */
  change(change: StoreChange): void;
  /** The connection was lost: the database may be gone (the store probes it). */
  lost(err: unknown): void;
}

export class ChangeListener {
  /** The connection listening now, or being connected: the only one whose loss counts. */
  private current: pg.Client | null = null;
  private listening = false;
  private retryMs = FIRST_RETRY_MS;
  private timer: NodeJS.Timeout | null = null;
  private beat: NodeJS.Timeout | null = null;
  private stopped = false;
  /** Whether the last loss was logged: one line per outage, not per attempt. */
  private down = false;

  constructor(
    private readonly options: PostgresOptions,
    private readonly node: string,
    private readonly log: Logger,
    private readonly events: ListenerEvents,
  ) {}

  /** Connects and LISTENs; resolves once listening (or once the first attempt failed: retries go on in the background). */
  async start(): Promise<void> {
    await this.connect();
  }

  /** The listening connection's backend pid (tests end it to show polling takes over), or null while it is down. */
  get backendPid(): number | null {
    return this.listening ? ((this.current as unknown as { processID?: number } | null)?.processID ?? null) : null;
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    const client = new pg.Client(connectionConfig(this.options));
    this.current = client;
    client.on('error', (err) => this.lose(client, err));
    client.on('end', () => this.lose(client, new Error('the connection ended')));
    client.on('notification', (message) => this.deliver(message.payload));
    try {
      await client.connect();
      await client.query(`LISTEN ${CHANNEL}`);
    } catch (err) {
      this.lose(client, err);
      return;
    }
    if (this.stopped || this.current !== client) {
      await client.end().catch(() => undefined);
      return;
    }
    this.listening = true;
    this.heartbeat(client);
    this.retryMs = FIRST_RETRY_MS;
    if (this.down) this.log.info('listening for other nodes\' changes again');
    this.down = false;
  }

  /**
   * A LISTEN connection only receives, so a peer gone without a reset (a
   * lost network, a failover) would go unnoticed: a statement now and then
   * (under the store's query timeout) finds it, and the reconnect begins.
   */
  private heartbeat(client: pg.Client): void {
    this.beat = setInterval(() => {
      if (this.current !== client) return;
      client.query('SELECT 1').catch((err: unknown) => this.lose(client, err));
    }, HEARTBEAT_MS);
    this.beat.unref();
  }

  private lose(client: pg.Client, err: unknown): void {
    if (this.current !== client) return;
    if (this.beat) clearInterval(this.beat);
    this.beat = null;
    this.current = null;
    this.listening = false;
    client.removeAllListeners('end');
    client.end().catch(() => undefined);
    if (this.stopped) return;
    if (!this.down) this.log.warn({ err: errorMessage(err) }, "lost the connection that hears other nodes' changes; polling until it is back");
    this.down = true;
    this.events.lost(err);
    this.timer = setTimeout(() => {
      this.timer = null;
      void this.connect();
    }, this.retryMs);
    this.timer.unref();
    this.retryMs = Math.min(this.retryMs * 2, FIXED_LIMITS.postgres_listen_retry_max_seconds * 1000);
  }

  private deliver(payload: string | undefined): void {
    let message: Partial<ChangeMessage>;
    try {
      message = JSON.parse(payload ?? '') as Partial<ChangeMessage>;
    } catch {
      return;
    }
    if (message.node === this.node || typeof message.kind !== 'string' || !KINDS.has(message.kind)) return;
    const change: StoreChange = { kind: message.kind };
    if (typeof message.username === 'string') change.username = message.username;
    this.events.change(change);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    if (this.beat) clearInterval(this.beat);
    this.beat = null;
    const client = this.current;
    this.current = null;
    this.listening = false;
    if (client) {
      client.removeAllListeners('end');
      await client.end().catch(() => undefined);
    }
  }
}
