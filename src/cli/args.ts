import type { ParseArgsConfig } from 'node:util';

/** A bad command line. The CLI prints the message and exits with status 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}

export function requireString(value: unknown, flag: string, hint: string): string {
  if (typeof value !== 'string' || value.length === 0) throw new UsageError(`missing ${flag}: ${hint}`);
  return value;
}

/** Parses a positive number option; `Infinity` and `unlimited` are accepted when `allowInfinite` is set. */
export function parsePositive(value: unknown, flag: string, fallback: number, allowInfinite = false): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'string') throw new UsageError(`invalid ${flag}: expected a number`);
  if (allowInfinite && (value === 'unlimited' || value === 'Infinity')) return Infinity;
  const parsed = Number(value);
  if (!Number.isFinite(parsed) || parsed <= 0) {
    throw new UsageError(`invalid ${flag} "${value}": expected a positive number${allowInfinite ? ' or "unlimited"' : ''}`);
  }
  return parsed;
}

export function parseInteger(value: unknown, flag: string, fallback: number, min = 1): number {
  if (value === undefined) return fallback;
  const parsed = Number(value);
  if (typeof value !== 'string' || !Number.isInteger(parsed) || parsed < min) {
    throw new UsageError(`invalid ${flag} "${String(value)}": expected an integer of at least ${min}`);
  }
  return parsed;
}

export function databaseUrlFrom(value: unknown): string {
  const url = typeof value === 'string' ? value : process.env.DATABASE_URL;
  if (url === undefined || url.length === 0) {
    throw new UsageError('missing database: set DATABASE_URL or pass --database-url postgres://user@host/db');
  }
  return url;
}

/** Options every command that reaches the database and the KMS takes. */
export const connectionOptions = {
  'database-url': { type: 'string' },
  'kms-endpoint': { type: 'string' },
  'kms-region': { type: 'string' },
} as const satisfies ParseArgsConfig['options'];
