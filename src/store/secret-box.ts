/**
 * Encryption at rest for TOTP secrets (AES-256-GCM), and the subkeys other
 * secrets at rest are keyed with (recovery codes).
 *
 * A copy of the database alone must not let anyone mint one-time codes, so the
 * key lives in a separate file. The account name is bound as associated data:
 * a ciphertext copied onto another account's row does not decrypt.
 */
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { ErrorCodes, MailgateError } from '../errors.js';

export const KEY_BYTES = 32;
const NONCE_BYTES = 12;
const TAG_BYTES = 16;
const FORMAT_VERSION = 1;

/** Reads the store key, creating it (mode 0600) on first use. */
export function loadOrCreateKey(file: string): Buffer {
  if (!keyFileExists(file)) createKey(file);
  return loadKey(file);
}

/**
 * Whether the key file is there. Anything but "it is not there" (a folder
 * this user may not enter, say) is an error about reading it: taking it for
 * absent would report a failed creation of a file that exists.
 */
function keyFileExists(file: string): boolean {
  try {
    statSync(file);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw cannotRead(file, err);
  }
}

function createKey(file: string): void {
  try {
    mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    // 'wx' fails if the file exists, so two processes starting together
    // cannot overwrite each other's fresh key.
    writeFileSync(file, randomBytes(KEY_BYTES), { flag: 'wx', mode: 0o600 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
      throw new MailgateError(ErrorCodes.KEY_FILE, `store.key_file: cannot create ${file}: ${describeFsError(err)}`);
    }
  }
}

/** Reads the store key, which must exist. */
export function loadKey(file: string): Buffer {
  let key: Buffer;
  try {
    key = readFileSync(file);
  } catch (err) {
    throw cannotRead(file, err);
  }
  if (key.length !== KEY_BYTES) {
    throw new MailgateError(ErrorCodes.KEY_FILE, `store.key_file: ${file} must hold exactly ${KEY_BYTES} bytes, it holds ${key.length}`);
  }
  return key;
}

function cannotRead(file: string, err: unknown): MailgateError {
  const hint = (err as NodeJS.ErrnoException).code === 'EACCES' ? '; let the user mailgate runs as read it and enter its folder' : '';
  return new MailgateError(ErrorCodes.KEY_FILE, `store.key_file: cannot read ${file}: ${describeFsError(err)}${hint}`);
}

/** "EACCES (permission denied)": the code to search for, and the words to read. */
function describeFsError(err: unknown): string {
  const { code, message } = err as NodeJS.ErrnoException;
  if (!code) return String(message ?? err);
  const words = /^[A-Z]+: ([^,]+)/.exec(message ?? '')?.[1];
  return words ? `${code} (${words})` : code;
}

/**
 * A subkey of the store key for one purpose (HKDF-SHA-256, `label` as the
 * info): the same key is never used both to encrypt and to MAC, and a
 * subkey tells nothing about the key or the other subkeys.
 */
export function deriveKey(key: Buffer, label: string): Buffer {
  return Buffer.from(hkdfSync('sha256', key, Buffer.alloc(0), label, KEY_BYTES));
}

export function seal(key: Buffer, plaintext: Buffer, associatedData: string): Buffer {
  const nonce = randomBytes(NONCE_BYTES);
  const cipher = createCipheriv('aes-256-gcm', key, nonce);
  cipher.setAAD(Buffer.from(associatedData, 'utf8'));
  const body = Buffer.concat([cipher.update(plaintext), cipher.final()]);
  return Buffer.concat([Buffer.from([FORMAT_VERSION]), nonce, body, cipher.getAuthTag()]);
}

export function open(key: Buffer, sealed: Buffer, associatedData: string): Buffer {
  if (sealed.length < 1 + NONCE_BYTES + TAG_BYTES || sealed[0] !== FORMAT_VERSION) {
    throw new MailgateError(ErrorCodes.KEY_FILE, 'an encrypted secret has an unknown format');
  }
  const nonce = sealed.subarray(1, 1 + NONCE_BYTES);
  const tag = sealed.subarray(sealed.length - TAG_BYTES);
  const body = sealed.subarray(1 + NONCE_BYTES, sealed.length - TAG_BYTES);
  const decipher = createDecipheriv('aes-256-gcm', key, nonce);
  decipher.setAAD(Buffer.from(associatedData, 'utf8'));
  decipher.setAuthTag(tag);
  try {
    return Buffer.concat([decipher.update(body), decipher.final()]);
  } catch {
    throw new MailgateError(ErrorCodes.KEY_FILE, 'an encrypted secret does not decrypt with this key file (wrong key or tampered data)');
  }
}
