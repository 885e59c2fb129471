import { pino, type Logger } from 'pino';

/**
 * Fields of PostgreSQL errors that can quote row data: `detail` ("Failing row
 * contains (…)") may hold a token and the hex of a wrapped key. They are
 * dropped from every logged error.
 */
const rowDataFields = ['detail', 'where', 'internalQuery', 'query', 'parameters'];

/** Serializes an error like pino's default, without the fields that can quote row data. */
export function serializeError(error: unknown): unknown {
  if (!(error instanceof Error)) return error;
  const serialized = pino.stdSerializers.err(error) as unknown as Record<string, unknown>;
  for (const field of rowDataFields) delete serialized[field];
  return serialized;
}

/**
 * Creates the process logger. Logs go to stderr so that `--json` output on
 * stdout stays machine-readable. `REWRAP_LOG_LEVEL` sets the level.
 */
export function createLogger(name = 'rewrap', level = process.env.REWRAP_LOG_LEVEL ?? 'info'): Logger {
  return pino({ name, level, serializers: { err: serializeError } }, pino.destination({ fd: 2, sync: false }));
}

export type { Logger };
