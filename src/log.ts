import { pino, type Logger } from 'pino';

/**
 * Creates the process logger. Logs go to stderr so that `--json` output on
 * stdout stays machine-readable. `REWRAP_LOG_LEVEL` sets the level.
 */
export function createLogger(name = 'rewrap', level = process.env.REWRAP_LOG_LEVEL ?? 'info'): Logger {
  return pino({ name, level }, pino.destination({ fd: 2, sync: false }));
}

export type { Logger };
