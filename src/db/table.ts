/**
 * Location of one vault table's wrapped DEKs: the table and its column
 * names. The default is the table that `rewrap init` creates, and an
 * application maps its own by naming its columns. The key column must be a
 * `bigint`.
 */
export interface VaultTable {
  /** Table name, optionally schema-qualified (`public.vault`). */
  name: string;
  key: string;
  matter: string;
  token: string;
  wrappedKey: string;
  kekId: string;
  /** Column set to `now()` on every rewrap; null when the table has none. */
  rotatedAt: string | null;
}

export const defaultVaultTable: VaultTable = {
  name: 'public.vault',
  key: 'id',
  matter: 'matter_id',
  token: 'token',
  wrappedKey: 'wrapped_key',
  kekId: 'kek_id',
  rotatedAt: 'rotated_at',
};

/** Name of the table that holds the payload ciphertexts of the default vault. */
export const defaultPayloadTable = 'public.vault_payload';

/** Quotes one SQL identifier. */
export function quoteIdentifier(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

/** Quotes a possibly schema-qualified name, part by part. */
export function quoteQualified(name: string): string {
  const parts = name.split('.');
  if (parts.length > 2 || parts.some((part) => part.length === 0)) {
    throw new Error(`invalid table name "${name}": expected "table" or "schema.table"`);
  }
  return parts.map(quoteIdentifier).join('.');
}

/** The table's name (`table`) and columns, quoted and ready to splice into SQL. */
export type QuotedVaultTable = Omit<VaultTable, 'name'> & { table: string };

export function quoteVaultTable(table: VaultTable): QuotedVaultTable {
  return {
    table: quoteQualified(table.name),
    key: quoteIdentifier(table.key),
    matter: quoteIdentifier(table.matter),
    token: quoteIdentifier(table.token),
    wrappedKey: quoteIdentifier(table.wrappedKey),
    kekId: quoteIdentifier(table.kekId),
    rotatedAt: table.rotatedAt === null ? null : quoteIdentifier(table.rotatedAt),
  };
}
