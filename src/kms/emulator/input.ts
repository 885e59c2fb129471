import type { EncryptionContext } from './blob.js';
import { validationError } from './errors.js';

/** A parsed JSON request body. */
export type Input = Record<string, unknown>;

export function requireString(input: Input, name: string, maxLength = 2048): string {
  const value = input[name];
  if (value === undefined || value === null) throw validationError(`1 validation error detected: Value null at '${lowerFirst(name)}' failed to satisfy constraint: Member must not be null`);
  return checkString(name, value, maxLength);
}

export function optionalString(input: Input, name: string, maxLength = 2048): string | undefined {
  const value = input[name];
  if (value === undefined || value === null) return undefined;
  return checkString(name, value, maxLength);
}

/** Decodes a base64 field and checks that its length is within `minBytes`..`maxBytes`. */
export function requireBlob(input: Input, name: string, minBytes: number, maxBytes: number): Buffer {
  const value = input[name];
  if (typeof value !== 'string') throw validationError(`${name} is missing or not a base64 string.`);
  const bytes = Buffer.from(value, 'base64');
  if (bytes.length < minBytes || bytes.length > maxBytes) {
    throw validationError(`1 validation error detected: Value at '${lowerFirst(name)}' failed to satisfy constraint: Member must have length between ${minBytes} and ${maxBytes} bytes (got ${bytes.length}).`);
  }
  return bytes;
}

export function optionalContext(input: Input, name: string): EncryptionContext | undefined {
  const value = input[name];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'object' || Array.isArray(value)) throw validationError(`${name} must be a map of strings to strings.`);
  for (const entry of Object.values(value)) {
    if (typeof entry !== 'string') throw validationError(`${name} must be a map of strings to strings.`);
  }
  return value as EncryptionContext;
}

export function optionalInteger(input: Input, name: string, min: number, max: number): number | undefined {
  const value = input[name];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw validationError(`1 validation error detected: Value '${String(value)}' at '${lowerFirst(name)}' failed to satisfy constraint: Member must be an integer from ${min} to ${max}.`);
  }
  return value;
}

export function optionalEnum<T extends string>(input: Input, name: string, allowed: readonly T[]): T | undefined {
  const value = input[name];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'string' || !(allowed as readonly string[]).includes(value)) {
    throw validationError(`1 validation error detected: Value '${String(value)}' at '${lowerFirst(name)}' failed to satisfy constraint: Member must satisfy enum value set: [${allowed.join(', ')}]`);
  }
  return value as T;
}

export function optionalArray(input: Input, name: string, maxItems: number): unknown[] | undefined {
  const value = input[name];
  if (value === undefined || value === null) return undefined;
  if (!Array.isArray(value) || value.length > maxItems) throw validationError(`${name} must be a list of at most ${maxItems} items.`);
  return value;
}

/**
 * Returns one page of `items`. The marker is the decimal offset of the next
 * item, so a marker stays valid only while no earlier item is added or removed.
 */
export function paginate<T>(items: T[], input: Input, maxLimit: number, defaultLimit: number): { page: T[]; Truncated: boolean; NextMarker?: string } {
  const limit = optionalInteger(input, 'Limit', 1, maxLimit) ?? defaultLimit;
  const marker = optionalString(input, 'Marker', 1024);
  let start = 0;
  if (marker !== undefined) {
    if (!/^\d+$/.test(marker)) throw validationError(`Marker ${marker} is invalid. Pass the NextMarker of the previous response.`);
    start = Number(marker);
  }
  const page = items.slice(start, start + limit);
  const end = start + page.length;
  if (end < items.length) return { page, Truncated: true, NextMarker: String(end) };
  return { page, Truncated: false };
}

function checkString(name: string, value: unknown, maxLength: number): string {
  if (typeof value !== 'string' || value.length === 0 || value.length > maxLength) {
    throw validationError(`1 validation error detected: Value at '${lowerFirst(name)}' failed to satisfy constraint: Member must be a string of length 1 to ${maxLength}.`);
  }
  return value;
}

function lowerFirst(name: string): string {
  return name.charAt(0).toLowerCase() + name.slice(1);
}
