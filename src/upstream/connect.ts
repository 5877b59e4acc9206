/**
 * Connections to the real mail server: TCP, implicit TLS or a STARTTLS
 * upgrade, with certificate verification and deadlines. Protocol-neutral;
 * imap-login.ts and pop3-login.ts speak the protocols over it.
 */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import type { UpstreamConfig } from '../config/schema.js';
import { ConfigError, configPath } from '../config/load.js';

export interface UpstreamTarget {
  host: string;
  port: number;
  tls: 'none' | 'starttls' | 'implicit';
  /** Extra CA certificates (PEM); when absent the system store is used. */
  ca?: Buffer;
  verify: boolean;
  /** Name to verify the certificate against (and to send as SNI). */
  servername: string;
}

/** Why an upstream login did not happen; the text is for the log, never the client. */
export class UpstreamError extends Error {
  override readonly name = 'UpstreamError';
}

/** The upstream of `protocol` as configured; a `ca` file that cannot be read is a ConfigError naming its key. */
export function upstreamTarget(config: UpstreamConfig, protocol: 'imap' | 'pop3'): UpstreamTarget {
  return {
    host: config.host,
    port: config.port,
    tls: config.tls,
    ...(config.ca ? { ca: readCa(configPath(config.ca), `upstream.${protocol}.ca`) } : {}),
    verify: config.verify,
    servername: config.servername || config.host,
  };
}

function readCa(file: string, key: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new ConfigError(`${key}: cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

function tlsOptions(target: UpstreamTarget): tls.ConnectionOptions {
  return {
    ...(target.ca ? { ca: target.ca } : {}),
    rejectUnauthorized: target.verify,
    // SNI must be a host name; for an IP, checkServerIdentity still compares
    // against the certificate's IP SANs.
    ...(net.isIP(target.servername) ? {} : { servername: target.servername }),
    checkServerIdentity: (_host, cert) => tls.checkServerIdentity(target.servername, cert),
    minVersion: 'TLSv1.2',
  };
}

/** Opens TCP (or implicit TLS) to the upstream, failing after `timeoutMs`. */
export function connectUpstream(target: UpstreamTarget, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket =
      target.tls === 'implicit'
        ? tls.connect({ host: target.host, port: target.port, ...tlsOptions(target) })
        : net.connect({ host: target.host, port: target.port });
    const readyEvent = target.tls === 'implicit' ? 'secureConnect' : 'connect';
    const timer = setTimeout(() => fail(new UpstreamError(`connecting to ${target.host}:${target.port} timed out`)), timeoutMs);
    const fail = (err: Error) => {
      clearTimeout(timer);
      socket.removeListener(readyEvent, ready);
      socket.destroy();
      reject(err instanceof UpstreamError ? err : new UpstreamError(`cannot connect to ${target.host}:${target.port}: ${err.message}`));
    };
    const ready = () => {
      clearTimeout(timer);
      socket.removeListener('error', fail);
      resolve(socket);
    };
    socket.once(readyEvent, ready);
    socket.once('error', fail);
  });
}

/** Upgrades an upstream connection after its STARTTLS/STLS was accepted. */
export function upgradeUpstream(socket: net.Socket, target: UpstreamTarget, timeoutMs: number): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const secure = tls.connect({ socket, ...tlsOptions(target) });
    // The TCP socket underneath outlives its TLS wrapper otherwise (half-closed,
    // until the peer's FIN): close it together with the TLS socket.
    secure.once('close', () => socket.destroy());
    const timer = setTimeout(() => fail(new UpstreamError('TLS handshake with the upstream timed out')), timeoutMs);
    const fail = (err: Error) => {
      clearTimeout(timer);
      secure.destroy();
      socket.destroy();
      reject(err instanceof UpstreamError ? err : new UpstreamError(`TLS with the upstream failed: ${err.message}`));
    };
    secure.once('secureConnect', () => {
      clearTimeout(timer);
      secure.removeListener('error', fail);
      resolve(secure);
    });
    secure.once('error', fail);
  });
}
