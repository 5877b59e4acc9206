/**
 * The HAProxy configuration shipped as an example (config/haproxy/mailgate.cfg)
 * and shown in docs/scaling.md is the one the scale-out tests run
 * (test/support/haproxy.ts builds both), and HAProxy accepts it.
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { ROOT } from '../support/cli.js';
import { exampleConfig, haproxyConfig, EXAMPLE_LAYOUT, HAPROXY } from '../support/haproxy.js';

const execFileP = promisify(execFile);
const SHIPPED = path.join(ROOT, 'config', 'haproxy', 'mailgate.cfg');

describe('the shipped HAProxy example', () => {
  it('is what the tests generate, and docs/scaling.md shows it as it is', () => {
    // Catches: an example (or a doc) that drifted from the configuration the tests prove.
    const shipped = readFileSync(SHIPPED, 'utf8');
    expect(shipped).toBe(exampleConfig());
    const doc = readFileSync(path.join(ROOT, 'docs', 'scaling.md'), 'utf8');
    expect(doc).toContain(haproxyConfig(EXAMPLE_LAYOUT));
  });

  it('is a configuration HAProxy accepts', async () => {
    const { stdout, stderr } = await execFileP(HAPROXY, ['-c', '-f', SHIPPED]);
    expect(`${stdout}${stderr}`).toContain('Configuration file is valid');
    expect(stderr).not.toMatch(/WARNING|ALERT/);
  });
});
