/**
 * The gateway's own TLS: certificate loading (or first-run self-signed
 * generation), the server context, and the server-side STARTTLS upgrade.
 */
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import type { Socket } from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { generate } from 'selfsigned';
import type { Config } from '../config/schema.js';
import { configPath } from '../config/load.js';
import type { Logger } from '../log/logger.js';

export class TlsSetupError extends Error {
  override readonly name = 'TlsSetupError';
}

export interface ServerTls {
  context: tls.SecureContext;
  minVersion: tls.SecureVersion;
  certFile: string;
  /** The PEM pair itself, for servers that take it rather than a context (the self-service page's HTTPS). */
  cert: Buffer;
  key: Buffer;
}

/** ALPN ids a mail client may announce (RFC 7301 registry); anything else is refused (ALPACA). */
export const ALLOWED_ALPN: Record<'imap' | 'pop3', string> = { imap: 'imap', pop3: 'pop3' };

export async function loadServerTls(config: Config, log: Logger): Promise<ServerTls> {
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
  let cert: Buffer;
  let key: Buffer;
  try {
    cert = readFileSync(certFile);
    key = readFileSync(keyFile);
  } catch (err) {
    throw new TlsSetupError(`cannot read TLS certificate or key: ${(err as Error).message}`);
  }
  assertKeyMatchesCert(cert, key, certFile, keyFile);
  const minVersion = config.tls.min_version;
  try {
    return { context: tls.createSecureContext({ cert, key, minVersion }), minVersion, certFile, cert, key };
  } catch (err) {
    throw new TlsSetupError(`TLS certificate ${certFile} or key ${keyFile} is unusable: ${(err as Error).message}`);
  }
}

/**
 * OpenSSL takes a private key of another type than the certificate's (an RSA
 * key with an EC certificate) without complaint, and then fails every
 * handshake; say so at start-up instead.
 */
function assertKeyMatchesCert(cert: Buffer, key: Buffer, certFile: string, keyFile: string): void {
  let matches: boolean;
  try {
    matches = new X509Certificate(cert).checkPrivateKey(createPrivateKey(key));
  } catch (err) {
    throw new TlsSetupError(`tls.cert ${certFile} or tls.key ${keyFile} is not a PEM certificate and private key: ${(err as Error).message}`);
  }
  if (!matches) {
    throw new TlsSetupError(`tls.key ${keyFile} is not the private key of the certificate in tls.cert ${certFile}; configure the key that belongs to it`);
  }
}

async function writeSelfSigned(certFile: string, keyFile: string): Promise<void> {
  const now = new Date();
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
 * Wraps an accepted (or STARTTLS-upgraded) socket in server-side TLS.
 * ALPN: a client that names a protocol must name ours; `http/1.1` or any
 * other id fails the handshake (cross-protocol attacks, ALPACA).
 */
export function wrapServerTls(socket: Socket, options: TlsServerOptions): tls.TLSSocket {
  return new tls.TLSSocket(socket, {
    isServer: true,
    secureContext: options.tls.context,
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
