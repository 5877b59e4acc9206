/**
 * The gateway's certificates, read and checked: at start, and again at every
 * reload, where a certificate that fails a check refuses the whole reload.
 *
 * For each configured pair: the files can be read, the key is the
 * certificate's, the chain in the file is complete, OpenSSL takes the pair.
 * "Complete" means a mail program can build a path without fetching
 * anything: from the leaf, each certificate's issuer is the next one in the
 * file, up to one that is self-signed (a self-signed leaf alone is complete)
 * or whose issuer is a root of Node's bundled Mozilla store (the roots mail
 * programs trust). A private CA's root goes at the end of the file.
 * A name the certificate does not cover, and the expiry, are logged, not
 * refused: both are the operator's call.
 */
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import tls from 'node:tls';
import { FIXED_LIMITS } from '../config/limits.js';
import { configPath } from '../config/load.js';
import { serverCertificates, type Config } from '../config/schema.js';
import type { Logger } from '../log/logger.js';

export class TlsSetupError extends Error {
  override readonly name = 'TlsSetupError';
}

/** One certificate, read, checked, and ready to serve. */
export interface LoadedCertificate {
  /** How the configuration names it in messages: `tls` or `tls.certificates[1]`. */
  key: string;
  certFile: string;
  keyFile: string;
  /** SNI names it is chosen for, lower-case (none: only as the default). */
  names: string[];
  /** The PEM chain and key as read, for servers that take them rather than a context (the page's HTTPS). */
  cert: Buffer;
  privateKey: Buffer;
  leaf: X509Certificate;
  context: tls.SecureContext;
}

export interface CertificateSet {
  /** The default first: served without SNI, or for a name no certificate has. */
  certificates: [LoadedCertificate, ...LoadedCertificate[]];
  minVersion: tls.SecureVersion;
}

const DAY_MS = 86_400_000;

/** Reads and checks every configured certificate; throws a one-line TlsSetupError on the first that fails. */
export function loadCertificates(config: Pick<Config, 'tls'>): CertificateSet {
  const minVersion = config.tls.min_version;
  const entries = serverCertificates(config.tls);
  const key = (index: number) => (config.tls.certificates.length > 0 ? `tls.certificates[${index}]` : 'tls');
  const certificates = entries.map((entry, index) => loadCertificate(key(index), configPath(entry.cert), configPath(entry.key), entry.names, minVersion));
  return { certificates: certificates as CertificateSet['certificates'], minVersion };
}

function loadCertificate(key: string, certFile: string, keyFile: string, names: string[], minVersion: tls.SecureVersion): LoadedCertificate {
  const cert = readPem(`${key}.cert`, certFile);
  const privateKey = readPem(`${key}.key`, keyFile);
  const chain = parseChain(cert, `${key}.cert`, certFile);
  const leaf = chain[0]!;
  let matches: boolean;
  try {
    matches = leaf.checkPrivateKey(createPrivateKey(privateKey));
  } catch (err) {
    throw new TlsSetupError(`${key}.key ${keyFile} is not a PEM private key: ${(err as Error).message}`);
  }
  // OpenSSL takes a key of another type than the certificate's (an RSA key with
  // an EC certificate) without complaint, and then fails every handshake.
  if (!matches) throw new TlsSetupError(`${key}.key ${keyFile} is not the private key of the certificate in ${key}.cert ${certFile}; configure the key that belongs to it`);
  const gap = chainGap(chain);
  if (gap) {
    throw new TlsSetupError(
      `${key}.cert ${certFile}: the certificate chain is incomplete: nothing in the file issued "${oneLine(gap.subject)}" (issuer "${oneLine(gap.issuer)}"), and that issuer is not a known root; ` +
        'put the intermediate certificates after the leaf (for Let\'s Encrypt, fullchain.pem rather than cert.pem), and a private CA\'s root at the end',
    );
  }
  let context: tls.SecureContext;
  try {
    context = tls.createSecureContext({ cert, key: privateKey, minVersion });
  } catch (err) {
    throw new TlsSetupError(`${key}.cert ${certFile} or ${key}.key ${keyFile} is unusable: ${(err as Error).message}`);
  }
  return { key, certFile, keyFile, names, cert, privateKey, leaf, context };
}

function readPem(key: string, file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    throw new TlsSetupError(`${key} ${file}: cannot read: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
}

/** Every certificate in a PEM file, in order (the leaf first). */
function parseChain(pem: Buffer, key: string, file: string): X509Certificate[] {
  const blocks = pem.toString('latin1').match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  if (blocks.length === 0) throw new TlsSetupError(`${key} ${file} holds no PEM certificate`);
  try {
    return blocks.map((block) => new X509Certificate(block));
  } catch (err) {
    throw new TlsSetupError(`${key} ${file} holds a certificate that cannot be read: ${(err as Error).message}`);
  }
}

function issued(issuer: X509Certificate, subject: X509Certificate): boolean {
  return subject.checkIssued(issuer) && subject.verify(issuer.publicKey);
}

/** Signed by its own key. Not checkIssued: OpenSSL's check wants a CA's key usage, which a self-signed leaf lacks. */
function selfSigned(certificate: X509Certificate): boolean {
  return certificate.subject === certificate.issuer && certificate.verify(certificate.publicKey);
}

/** The certificate whose issuer is missing, or null when the chain is complete. */
export function chainGap(chain: readonly X509Certificate[]): X509Certificate | null {
  let current = chain[0]!;
  const seen = new Set<X509Certificate>([current]);
  for (;;) {
    if (selfSigned(current) || bundledRoots().some((root) => issued(root, current))) return null;
    const next = chain.find((candidate) => !seen.has(candidate) && issued(candidate, current));
    if (!next) return current;
    seen.add(next);
    current = next;
  }
}

let roots: X509Certificate[] | null = null;
/** Node's bundled Mozilla roots, parsed once (the first check, a few milliseconds). */
function bundledRoots(): X509Certificate[] {
  roots ??= tls.rootCertificates.map((pem) => new X509Certificate(pem));
  return roots;
}

/** A subject or issuer as one line (X509Certificate gives one attribute per line). */
function oneLine(dn: string): string {
  return dn.split('\n').join(', ');
}

/** Whether a certificate covers a configured SNI name (a wildcard name: any one label in its place). */
function covers(leaf: X509Certificate, name: string): boolean {
  return leaf.checkHost(name.startsWith('*.') ? `sni-check${name.slice(1)}` : name) !== undefined;
}

/**
 * The lines each certificate gets at start and at every reload: when it
 * expires (info), a warning within the warning period or once expired, and
 * a warning for a configured name it does not cover.
 */
export function logCertificates(set: CertificateSet, log: Logger, now = Date.now()): void {
  for (const certificate of set.certificates) {
    const { leaf, certFile, names } = certificate;
    const notAfter = new Date(leaf.validTo);
    const daysLeft = Math.floor((notAfter.getTime() - now) / DAY_MS);
    const fields = { cert: certFile, subject: oneLine(leaf.subject), serial: leaf.serialNumber, names, notAfter: notAfter.toISOString(), daysLeft };
    log.info(fields, 'TLS certificate');
    if (notAfter.getTime() <= now) log.warn(fields, 'TLS certificate has expired: mail programs refuse it; renew it, then reload (SIGHUP)');
    else if (notAfter.getTime() - now < FIXED_LIMITS.certificate_expiry_warning_days * DAY_MS) log.warn(fields, 'TLS certificate expires soon: renew it, then reload (SIGHUP)');
    for (const name of names) {
      if (!covers(leaf, name)) log.warn({ cert: certFile, name }, 'TLS certificate does not cover a name it is configured for: clients asking for that name will refuse it');
    }
  }
}
