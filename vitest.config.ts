import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Integration tests start real Dovecot and gateway processes; give them room.
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: 'forks',
    // Build output must exist for CLI tests that spawn bin/mailgate.js.
    globalSetup: ['test/support/global-setup.ts'],
  },
});
