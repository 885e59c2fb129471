import { readFile } from 'node:fs/promises';
import { defaultVaultTable, type VaultTable } from './table.js';

/** An invalid vault table mapping. The CLI reports it as a usage error. */
export class TableConfigError extends Error {
  override name = 'TableConfigError';
}

const identifierPattern = /^[A-Za-z_][A-Za-z0-9_$]*$/;
const columnFields = ['key', 'matter', 'token', 'wrappedKey', 'kekId'] as const;

/**
 * Parses a vault table mapping: a JSON object naming the table and its
 * columns, for example
 * `{"name": "app.documents", "key": "doc_id", "matter": "case_id", "token": "doc_ref",
 *   "wrappedKey": "dek_wrapped", "kekId": "kek_arn", "rotatedAt": null}`.
 * Fields left out take the default table's column names. `source` names the
 * file in error messages.
 */
export function parseTableConfig(text: string, source: string): VaultTable {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new TableConfigError(`invalid table mapping in ${source}: not JSON (${(error as Error).message})`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new TableConfigError(`invalid table mapping in ${source}: expected a JSON object with "name" and column names`);
  }
  const input = parsed as Record<string, unknown>;
  const known = new Set<string>(['name', 'rotatedAt', ...columnFields]);
  for (const field of Object.keys(input)) {
    if (!known.has(field)) {
      throw new TableConfigError(`unknown field "${field}" in table mapping ${source}; expected name, ${columnFields.join(', ')} or rotatedAt`);
    }
  }
  const table: VaultTable = { ...defaultVaultTable };
  if (typeof input.name !== 'string' || !input.name.split('.').every((part) => identifierPattern.test(part)) || input.name.split('.').length > 2) {
    throw new TableConfigError(`invalid "name" in table mapping ${source}: expected "table" or "schema.table" made of letters, digits and underscores`);
  }
  table.name = input.name;
  for (const field of columnFields) {
    const value = input[field];
    if (value === undefined) continue;
    if (typeof value !== 'string' || !identifierPattern.test(value)) {
      throw new TableConfigError(`invalid "${field}" in table mapping ${source}: expected a column name made of letters, digits and underscores`);
    }
    table[field] = value;
  }
  if (input.rotatedAt !== undefined) {
    if (input.rotatedAt !== null && (typeof input.rotatedAt !== 'string' || !identifierPattern.test(input.rotatedAt))) {
      throw new TableConfigError(`invalid "rotatedAt" in table mapping ${source}: expected a column name or null`);
    }
    table.rotatedAt = input.rotatedAt;
  }
  return table;
}

/** Reads and parses a vault table mapping file. */
export async function loadTableConfig(path: string): Promise<VaultTable> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    throw new TableConfigError(`cannot read table mapping ${path}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
  }
  return parseTableConfig(text, path);
}
