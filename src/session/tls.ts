/**
 * The gateway's own TLS: the certificates it serves (read and checked by
 * certificates.ts, or a self-signed pair generated on the first run), chosen
 * by SNI name, replaced in place by a reload; and server-side TLS on a socket
 * (implicit, or after STARTTLS).
 */
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import type { Config } from '../config/schema.js';
import { configPath } from '../config/load.js';
import type { Logger } from '../log/logger.js';
import { loadCertificates, TlsSetupError, type CertificateSet, type LoadedCertificate } from './certificates.js';

export { TlsSetupError };

/** ALPN ids a mail client may announce (RFC 7301 registry); anything else is refused (ALPACA). */
export const ALLOWED_ALPN: Record<'imap' | 'pop3', string> = { imap: 'imap', pop3: 'pop3' };

type SniCallback = NonNullable<tls.TLSSocketOptions['SNICallback']>;

/**
 * The certificates being served, shared by every session and the page: a
 * reload replaces the set, and each handshake from then on (a new
 * connection, a STARTTLS on an old one) picks from the new set; a session
 * already encrypted keeps the pair it shook hands with.
 */
export class ServerTls {
  constructor(private current: CertificateSet) {}

  get set(): CertificateSet {
    return this.current;
  }

  get minVersion(): tls.SecureVersion {
    return this.current.minVersion;
  }

  /** The default certificate: for clients that send no SNI, or a name no certificate has. */
  get defaultCertificate(): LoadedCertificate {
    return this.current.certificates[0];
  }

  replace(set: CertificateSet): void {
    this.current = set;
  }

  /** The certificate for a name a client asked for: an exact name, then a wildcard for its first label, then the default. */
  certificateFor(servername: string): LoadedCertificate {
    const name = servername.toLowerCase();
    const dot = name.indexOf('.');
    const wildcard = dot > 0 ? `*${name.slice(dot)}` : null;
    const { certificates } = this.current;
    return (
      certificates.find((c) => c.names.includes(name)) ??
      (wildcard ? certificates.find((c) => c.names.includes(wildcard)) : undefined) ??
      certificates[0]
    );
  }

  /** One callback for every socket and the page's server: it reads the set at handshake time. */
  readonly sniCallback: SniCallback = (servername, callback) => callback(null, this.certificateFor(servername).context);
}

/**
 * Reads and checks the configured certificates. On the first run, a missing
 * single pair (`[tls] cert` and `key`) is generated self-signed when
 * `tls.self_signed` allows it; the pairs of `[[tls.certificates]]` are never
 * made up.
 */
export async function loadServerCertificates(config: Config, log: Logger): Promise<CertificateSet> {
  if (config.tls.certificates.length === 0) {
    const certFile = configPath(config.tls.cert);
    const keyFile = configPath(config.tls.key);
    const haveCert = existsSync(certFile);
    const haveKey = existsSync(keyFile);
    if (!haveCert || !haveKey) {
      if (!config.tls.self_signed) {
        throw new TlsSetupError(`${haveCert ? 'tls.key' : 'tls.cert'} ${haveCert ? keyFile : certFile} is missing and tls.self_signed is false; point it at the file, or set tls.self_signed = true for a generated test certificate`);
      }
      if (haveCert !== haveKey) {
        throw new TlsSetupError(`only one of ${certFile} and ${keyFile} exists; remove it or provide both`);
      }
      await writeSelfSigned(certFile, keyFile);
      log.warn(
        { cert: certFile, key: keyFile },
        'generated a self-signed TLS certificate; mail programs will warn until a real one is configured: set tls.cert and tls.key in [tls] to your certificate (full chain) and key, and tls.self_signed = false',
      );
    }
  }
  return loadCertificates(config);
}

async function writeSelfSigned(certFile: string, keyFile: string): Promise<void> {
  const now = new Date();
  // Loaded only on the first start that needs it: it is slow to load, and most starts never do.
  const { generate } = await import('selfsigned');
  const pems = await generate([{ name: 'commonName', value: 'localhost' }], {
    keyType: 'ec',
    curve: 'P-256',
    algorithm: 'sha256',
    notBeforeDate: new Date(now.getTime() - 60_000),
    notAfterDate: new Date(now.getTime() + 825 * 86_400_000),
    extensions: [
      { name: 'basicConstraints', cA: false },
      { name: 'keyUsage', digitalSignature: true, keyEncipherment: true },
      { name: 'extKeyUsage', serverAuth: true },
      {
        name: 'subjectAltName',
        altNames: [
          { type: 2, value: 'localhost' },
          { type: 7, ip: '127.0.0.1' },
          { type: 7, ip: '::1' },
        ],
      },
    ],
  });
  mkdirSync(path.dirname(certFile), { recursive: true });
  mkdirSync(path.dirname(keyFile), { recursive: true, mode: 0o700 });
  // The key is written first and exclusively: if two processes race, one wins
  // and the other fails loudly instead of pairing a cert with the wrong key.
  writeFileSync(keyFile, pems.private, { mode: 0o600, flag: 'wx' });
  writeFileSync(certFile, pems.cert, { mode: 0o644, flag: 'wx' });
}

export interface TlsServerOptions {
  tls: ServerTls;
  protocol: 'imap' | 'pop3';
}

/**
 * Wraps an accepted (or STARTTLS-upgraded) socket in server-side TLS, with
 * the certificates served at this moment (SNI picks among them).
 * ALPN: a client that names a protocol must name ours; `http/1.1` or any
 * other id fails the handshake (cross-protocol attacks, ALPACA).
 */
export function wrapServerTls(socket: Socket, options: TlsServerOptions): tls.TLSSocket {
  return new tls.TLSSocket(socket, {
    isServer: true,
    secureContext: options.tls.defaultCertificate.context,
    SNICallback: options.tls.sniCallback,
    requestCert: false,
    ALPNCallback: ALPN_CALLBACKS[options.protocol],
  });
}

type AlpnCallback = NonNullable<tls.TLSSocketOptions['ALPNCallback']>;

function alpnCallback(alpn: string): AlpnCallback {
  return ({ protocols }) => (protocols.includes(alpn) ? alpn : undefined);
}

/** One callback per protocol, not per connection: every TLS socket keeps its options for life. */
const ALPN_CALLBACKS: Record<'imap' | 'pop3', AlpnCallback> = { imap: alpnCallback(ALLOWED_ALPN.imap), pop3: alpnCallback(ALLOWED_ALPN.pop3) };
