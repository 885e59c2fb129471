import { createHmac, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';

import { type EncryptionContext, openBlob, readBlobKeyId, sealBlob, uuidToBytes } from './blob.js';
import { invalidCiphertext, invalidState, KmsError, notFound, validationError } from './errors.js';
import { defaultKeyPolicy, type DenyRule, denyingRule, parseKeyPolicy } from './key-policy.js';

export type KeyState = 'Enabled' | 'Disabled' | 'PendingDeletion';
export type KeySpec = 'SYMMETRIC_DEFAULT' | 'HMAC_256';
export type KeyUsage = 'ENCRYPT_DECRYPT' | 'GENERATE_VERIFY_MAC';

export interface Tag {
  TagKey: string;
  TagValue: string;
}

/**
 * A grant on a key, stored and persisted with the key. No operation creates
 * or checks grants yet, so every caller has full access to every key.
 */
export interface GrantRecord {
  grantId: string;
  granteePrincipal: string;
  operations: string[];
  constraints?: { encryptionContextSubset?: EncryptionContext; encryptionContextEquals?: EncryptionContext };
}

/** A key as held in memory, with its material and ARN cached for the request path. */
export interface KeyRecord {
  readonly keyId: string;
  readonly arn: string;
  readonly keyIdBytes: Buffer;
  readonly material: Buffer;
  readonly keySpec: KeySpec;
  readonly keyUsage: KeyUsage;
  readonly creationDate: number;
  description: string;
  state: KeyState;
  /** Epoch seconds at which the key is deleted, set only while the key is PendingDeletion. */
  deletionDate: number | undefined;
  pendingWindowInDays: number | undefined;
  tags: Map<string, string>;
  grants: GrantRecord[];
  /**
   * Access keys allowed to use the key, standing in for a key policy; undefined
   * allows every caller. An emulator extension, set through PUT /_emulator/key-access.
   */
  allowedPrincipals: string[] | undefined;
  /** Key policy document set by PutKeyPolicy; undefined means the default policy. */
  policy: string | undefined;
  /** Deny statements of `policy`, which every operation on the key checks. */
  denyRules: DenyRule[];
}

export interface AliasRecord {
  aliasName: string;
  targetKeyId: string;
  creationDate: number;
  lastUpdatedDate: number;
}

/** KeyMetadata as DescribeKey and CreateKey return it. */
export interface KeyMetadata {
  AWSAccountId: string;
  KeyId: string;
  Arn: string;
  CreationDate: number;
  Enabled: boolean;
  Description: string;
  KeyUsage: KeyUsage;
  KeyState: KeyState;
  DeletionDate?: number;
  PendingDeletionWindowInDays?: number;
  Origin: 'AWS_KMS';
  KeyManager: 'CUSTOMER';
  KeySpec: KeySpec;
  CustomerMasterKeySpec: KeySpec;
  EncryptionAlgorithms?: string[];
  MacAlgorithms?: string[];
  MultiRegion: false;
}

/** The JSON document that a state file contains. */
export interface PersistedState {
  version: 1;
  keys: Array<{
    keyId: string;
    material: string;
    keySpec: KeySpec;
    keyUsage: KeyUsage;
    description: string;
    keyState: KeyState;
    creationDate: number;
    deletionDate?: number;
    pendingWindowInDays?: number;
    tags: Tag[];
    grants: GrantRecord[];
    allowedPrincipals?: string[];
    policy?: string;
  }>;
  aliases: AliasRecord[];
  deletedKeyIds: string[];
}

export interface CreateKeyInput {
  description?: string;
  keySpec?: KeySpec;
  keyUsage?: KeyUsage;
  tags?: Tag[];
}

export interface KeyStoreOptions {
  region?: string;
  accountId?: string;
  /** Clock in milliseconds since the epoch. Tests replace it to move past deletion dates. */
  now?: () => number;
}

const ALIAS_NAME = /^alias\/[a-zA-Z0-9/_-]{1,250}$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const SECONDS_PER_DAY = 86_400;

/**
 * Keys, aliases and tags of one emulated account and region.
 *
 * A key whose DeletionDate has passed is deleted on the next lookup. Its id is
 * remembered, so a blob encrypted under it gets NotFoundException (the key is
 * gone) instead of InvalidCiphertextException (the blob names no key).
 */
export class KeyStore {
  readonly region: string;
  readonly accountId: string;
  /** Listener called after every change to keys, aliases or tags. The emulator persists the store from here. */
  onChange: (() => void) | undefined;

  private readonly keys = new Map<string, KeyRecord>();
  private readonly aliases = new Map<string, AliasRecord>();
  private readonly deletedKeyIds = new Set<string>();
  private readonly now: () => number;
  private readonly keyArnPrefix: string;
  private readonly aliasArnPrefix: string;

  constructor(options: KeyStoreOptions = {}) {
    this.region = options.region ?? 'us-east-1';
    this.accountId = options.accountId ?? '111122223333';
    this.now = options.now ?? Date.now;
    this.keyArnPrefix = `arn:aws:kms:${this.region}:${this.accountId}:key/`;
    this.aliasArnPrefix = `arn:aws:kms:${this.region}:${this.accountId}:`;
  }

  createKey(input: CreateKeyInput = {}): KeyRecord {
    const keySpec = input.keySpec ?? 'SYMMETRIC_DEFAULT';
    const keyUsage = input.keyUsage ?? (keySpec === 'HMAC_256' ? 'GENERATE_VERIFY_MAC' : 'ENCRYPT_DECRYPT');
    if (keySpec === 'SYMMETRIC_DEFAULT' && keyUsage !== 'ENCRYPT_DECRYPT') {
      throw validationError(`KeyUsage ${keyUsage} is not compatible with KeySpec SYMMETRIC_DEFAULT. Use ENCRYPT_DECRYPT.`);
    }
    if (keySpec === 'HMAC_256' && keyUsage !== 'GENERATE_VERIFY_MAC') {
      throw validationError(`KeyUsage ${keyUsage} is not compatible with KeySpec HMAC_256. Use GENERATE_VERIFY_MAC.`);
    }
    const tags = new Map<string, string>();
    for (const tag of input.tags ?? []) tags.set(tag.TagKey, tag.TagValue);

    const keyId = randomUUID();
    const record = this.buildRecord(keyId, randomBytes(32), keySpec, keyUsage, this.now() / 1000);
    record.description = input.description ?? '';
    record.tags = tags;
    this.keys.set(keyId, record);
    this.changed();
    return record;
  }

  keyArn(keyId: string): string {
    return this.keyArnPrefix + keyId;
  }

  aliasArn(aliasName: string): string {
    return this.aliasArnPrefix + aliasName;
  }

  /**
   * Resolves a key id, key ARN, alias name or alias ARN to its key.
   * Throws NotFoundException when nothing in this store matches.
   */
  resolveKey(reference: string): KeyRecord {
    let keyId: string | undefined;
    if (reference.startsWith('alias/')) {
      keyId = this.aliases.get(reference)?.targetKeyId;
    } else if (reference.startsWith('arn:')) {
      if (reference.startsWith(this.keyArnPrefix)) {
        keyId = reference.slice(this.keyArnPrefix.length);
      } else if (reference.startsWith(this.aliasArnPrefix + 'alias/')) {
        keyId = this.aliases.get(reference.slice(this.aliasArnPrefix.length))?.targetKeyId;
      }
    } else {
      keyId = reference;
    }
    const record = keyId === undefined ? undefined : this.liveKey(keyId);
    if (record === undefined) {
      throw notFound(reference.startsWith('alias/') || reference.includes(':alias/')
        ? `Alias ${reference} is not found.`
        : `Key '${reference}' does not exist`);
    }
    return record;
  }

  /**
   * Returns the key that a ciphertext blob's header names.
   * Throws InvalidCiphertextException for a malformed blob or a key this store never had,
   * and NotFoundException for a key that was deleted.
   */
  keyForBlob(blob: Buffer): KeyRecord {
    const keyId = readBlobKeyId(blob);
    const record = this.liveKey(keyId);
    if (record !== undefined) return record;
    if (this.deletedKeyIds.has(keyId)) throw notFound(`Key '${this.keyArn(keyId)}' does not exist`);
    throw invalidCiphertext();
  }

  /**
   * Throws unless the key may be used for a cryptographic operation of the given usage:
   * DisabledException, KMSInvalidStateException (pending deletion) or InvalidKeyUsageException.
   */
  assertUsable(record: KeyRecord, usage: KeyUsage): void {
    if (record.state === 'Disabled') throw new KmsError('DisabledException', `${record.arn} is disabled.`);
    if (record.state === 'PendingDeletion') throw invalidState(`${record.arn} is pending deletion.`);
    if (record.keyUsage !== usage) {
      throw new KmsError('InvalidKeyUsageException', `${record.arn} key usage is ${record.keyUsage} which is not valid for this operation.`);
    }
  }

  /** Encrypts under a usable key and returns the blob, exactly as the Encrypt operation does. */
  encrypt(record: KeyRecord, plaintext: Uint8Array, context: EncryptionContext | undefined): Buffer {
    this.assertUsable(record, 'ENCRYPT_DECRYPT');
    return sealBlob(record.keyIdBytes, record.material, plaintext, context);
  }

  /** Decrypts a blob whose key came from `keyForBlob`, checking the key's state first. */
  decrypt(record: KeyRecord, blob: Buffer, context: EncryptionContext | undefined): Buffer {
    this.assertUsable(record, 'ENCRYPT_DECRYPT');
    return openBlob(blob, record.material, context);
  }

  /**
   * Produces the same blob that Encrypt returns for this key, plaintext and context,
   * without HTTP, quota or request log. `keyId` may be any key reference.
   */
  wrapLocally(keyId: string, plaintext: Uint8Array, context: Record<string, string>): Uint8Array {
    return this.encrypt(this.resolveKey(keyId), plaintext, context);
  }

  /** Computes HMAC-SHA-256 of `message` under a usable HMAC key. */
  generateMac(record: KeyRecord, message: Uint8Array): Buffer {
    this.assertUsable(record, 'GENERATE_VERIFY_MAC');
    return createHmac('sha256', record.material).update(message).digest();
  }

  verifyMac(record: KeyRecord, message: Uint8Array, mac: Uint8Array): boolean {
    const expected = this.generateMac(record, message);
    return mac.length === expected.length && timingSafeEqual(expected, mac);
  }

  /**
   * Restricts a key to the given access key ids, or lifts the restriction
   * when `principals` is undefined. Returns the key.
   */
  setAllowedPrincipals(reference: string, principals: string[] | undefined): KeyRecord {
    const record = this.resolveKey(reference);
    record.allowedPrincipals = principals === undefined ? undefined : [...principals];
    this.changed();
    return record;
  }

  /** Returns the key's policy document, the default policy when none was set. */
  getKeyPolicy(record: KeyRecord): string {
    return record.policy ?? defaultKeyPolicy(this.accountId);
  }

  /** Replaces the key's policy. Throws MalformedPolicyDocumentException for a policy the emulator cannot enforce. */
  putKeyPolicy(record: KeyRecord, policy: string): void {
    record.denyRules = parseKeyPolicy(policy);
    record.policy = policy;
    this.changed();
  }

  /** Returns the IAM ARN that stands for an access key id, as the request log writes it. */
  principalArn(principal: string | undefined): string {
    return `arn:aws:iam::${this.accountId}:user/${principal ?? 'anonymous'}`;
  }

  /**
   * Throws AccessDeniedException when a Deny statement of the key policy
   * covers `operation` for `principal` (an access key id), or when the key's
   * access list does not name `principal`.
   */
  assertAllowed(record: KeyRecord, principal: string | undefined, operation?: string): void {
    if (operation !== undefined && denyingRule(record.denyRules, operation, this.principalArn(principal)) !== undefined) {
      throw new KmsError(
        'AccessDeniedException',
        `User ${this.principalArn(principal)} is not authorized to perform kms:${operation} on ${record.arn} with an explicit deny in the key policy.`,
      );
    }
    if (record.allowedPrincipals === undefined) return;
    if (principal !== undefined && record.allowedPrincipals.includes(principal)) return;
    throw new KmsError(
      'AccessDeniedException',
      `User ${principal ?? 'anonymous'} is not authorized to use ${record.arn}: the key's access list does not name this principal.`,
    );
  }

  /** Lists live keys in creation order. */
  listKeys(): KeyRecord[] {
    this.purgeExpired();
    return [...this.keys.values()];
  }

  describe(record: KeyRecord): KeyMetadata {
    const metadata: KeyMetadata = {
      AWSAccountId: this.accountId,
      KeyId: record.keyId,
      Arn: record.arn,
      CreationDate: record.creationDate,
      Enabled: record.state === 'Enabled',
      Description: record.description,
      KeyUsage: record.keyUsage,
      KeyState: record.state,
      Origin: 'AWS_KMS',
      KeyManager: 'CUSTOMER',
      KeySpec: record.keySpec,
      CustomerMasterKeySpec: record.keySpec,
      MultiRegion: false,
    };
    if (record.deletionDate !== undefined) metadata.DeletionDate = record.deletionDate;
    if (record.pendingWindowInDays !== undefined) metadata.PendingDeletionWindowInDays = record.pendingWindowInDays;
    if (record.keySpec === 'HMAC_256') metadata.MacAlgorithms = ['HMAC_SHA_256'];
    else metadata.EncryptionAlgorithms = ['SYMMETRIC_DEFAULT'];
    return metadata;
  }

  createAlias(aliasName: string, targetKey: string): AliasRecord {
    this.validateAliasName(aliasName);
    this.purgeExpired();
    if (this.aliases.has(aliasName)) {
      throw new KmsError('AlreadyExistsException', `An alias with the name ${this.aliasArn(aliasName)} already exists`);
    }
    const record = this.resolveKey(targetKey);
    if (record.state === 'PendingDeletion') throw invalidState(`${record.arn} is pending deletion.`);
    const now = this.now() / 1000;
    const alias: AliasRecord = { aliasName, targetKeyId: record.keyId, creationDate: now, lastUpdatedDate: now };
    this.aliases.set(aliasName, alias);
    this.changed();
    return alias;
  }

  updateAlias(aliasName: string, targetKey: string): void {
    const alias = this.aliases.get(aliasName);
    if (alias === undefined) throw notFound(`Alias ${this.aliasArn(aliasName)} is not found.`);
    const record = this.resolveKey(targetKey);
    if (record.state === 'PendingDeletion') throw invalidState(`${record.arn} is pending deletion.`);
    alias.targetKeyId = record.keyId;
    alias.lastUpdatedDate = this.now() / 1000;
    this.changed();
  }

  deleteAlias(aliasName: string): void {
    if (!this.aliases.delete(aliasName)) throw notFound(`Alias ${this.aliasArn(aliasName)} is not found.`);
    this.changed();
  }

  /** Lists aliases in creation order, only those of one key when `keyReference` is given. */
  listAliases(keyReference?: string): AliasRecord[] {
    this.purgeExpired();
    const all = [...this.aliases.values()];
    if (keyReference === undefined) return all;
    const keyId = this.resolveKey(keyReference).keyId;
    return all.filter((alias) => alias.targetKeyId === keyId);
  }

  enableKey(reference: string): void {
    const record = this.resolveKey(reference);
    if (record.state === 'PendingDeletion') throw invalidState(`${record.arn} is pending deletion.`);
    record.state = 'Enabled';
    this.changed();
  }

  disableKey(reference: string): void {
    const record = this.resolveKey(reference);
    if (record.state === 'PendingDeletion') throw invalidState(`${record.arn} is pending deletion.`);
    record.state = 'Disabled';
    this.changed();
  }

  /** Schedules deletion after 7 to 30 days (default 30) and returns the key. */
  scheduleKeyDeletion(reference: string, pendingWindowInDays = 30): KeyRecord {
    if (!Number.isInteger(pendingWindowInDays) || pendingWindowInDays < 7 || pendingWindowInDays > 30) {
      throw validationError(`PendingWindowInDays ${pendingWindowInDays} is invalid. It must be an integer from 7 to 30.`);
    }
    const record = this.resolveKey(reference);
    if (record.state === 'PendingDeletion') throw invalidState(`${record.arn} is pending deletion.`);
    record.state = 'PendingDeletion';
    record.pendingWindowInDays = pendingWindowInDays;
    record.deletionDate = Math.floor(this.now() / 1000) + pendingWindowInDays * SECONDS_PER_DAY;
    this.changed();
    return record;
  }

  /** Cancels a scheduled deletion and leaves the key Disabled, as AWS KMS does. */
  cancelKeyDeletion(reference: string): KeyRecord {
    const record = this.resolveKey(reference);
    if (record.state !== 'PendingDeletion') throw invalidState(`${record.arn} is not pending deletion.`);
    record.state = 'Disabled';
    record.deletionDate = undefined;
    record.pendingWindowInDays = undefined;
    this.changed();
    return record;
  }

  tagResource(reference: string, tags: Tag[]): void {
    const record = this.resolveKey(reference);
    for (const tag of tags) {
      if (tag.TagKey.startsWith('aws:')) throw new KmsError('TagException', `Tag key ${tag.TagKey} is invalid. Tag keys must not begin with "aws:".`);
    }
    for (const tag of tags) record.tags.set(tag.TagKey, tag.TagValue);
    this.changed();
  }

  untagResource(reference: string, tagKeys: string[]): void {
    const record = this.resolveKey(reference);
    for (const key of tagKeys) record.tags.delete(key);
    this.changed();
  }

  listResourceTags(reference: string): Tag[] {
    const record = this.resolveKey(reference);
    return [...record.tags].map(([TagKey, TagValue]) => ({ TagKey, TagValue }));
  }

  /** Returns the whole store, key material included, as a JSON-ready document. */
  snapshot(): PersistedState {
    const keys: PersistedState['keys'] = [];
    for (const record of this.keys.values()) {
      const key: PersistedState['keys'][number] = {
        keyId: record.keyId,
        material: record.material.toString('base64'),
        keySpec: record.keySpec,
        keyUsage: record.keyUsage,
        description: record.description,
        keyState: record.state,
        creationDate: record.creationDate,
        tags: [...record.tags].map(([TagKey, TagValue]) => ({ TagKey, TagValue })),
        grants: record.grants,
      };
      if (record.deletionDate !== undefined) key.deletionDate = record.deletionDate;
      if (record.pendingWindowInDays !== undefined) key.pendingWindowInDays = record.pendingWindowInDays;
      if (record.allowedPrincipals !== undefined) key.allowedPrincipals = record.allowedPrincipals;
      if (record.policy !== undefined) key.policy = record.policy;
      keys.push(key);
    }
    return { version: 1, keys, aliases: [...this.aliases.values()], deletedKeyIds: [...this.deletedKeyIds] };
  }

  /** Replaces the store's contents with a snapshot without calling `onChange`. */
  restore(state: PersistedState): void {
    if (state.version !== 1) throw new Error(`Unsupported state file version ${String(state.version)}; expected 1.`);
    this.keys.clear();
    this.aliases.clear();
    this.deletedKeyIds.clear();
    for (const key of state.keys) {
      const material = Buffer.from(key.material, 'base64');
      if (!UUID.test(key.keyId) || material.length !== 32) throw new Error(`State file entry for key ${key.keyId} is invalid: expected a UUID and 32 bytes of material.`);
      const record = this.buildRecord(key.keyId, material, key.keySpec, key.keyUsage, key.creationDate);
      record.description = key.description;
      record.state = key.keyState;
      record.deletionDate = key.deletionDate;
      record.pendingWindowInDays = key.pendingWindowInDays;
      record.tags = new Map(key.tags.map((tag) => [tag.TagKey, tag.TagValue]));
      record.grants = key.grants ?? [];
      record.allowedPrincipals = key.allowedPrincipals;
      if (key.policy !== undefined) {
        record.policy = key.policy;
        record.denyRules = parseKeyPolicy(key.policy);
      }
      this.keys.set(record.keyId, record);
    }
    for (const alias of state.aliases) this.aliases.set(alias.aliasName, { ...alias });
    for (const keyId of state.deletedKeyIds) this.deletedKeyIds.add(keyId);
  }

  private buildRecord(keyId: string, material: Buffer, keySpec: KeySpec, keyUsage: KeyUsage, creationDate: number): KeyRecord {
    return {
      keyId,
      arn: this.keyArn(keyId),
      keyIdBytes: uuidToBytes(keyId),
      material,
      keySpec,
      keyUsage,
      creationDate,
      description: '',
      state: 'Enabled',
      deletionDate: undefined,
      pendingWindowInDays: undefined,
      tags: new Map(),
      grants: [],
      allowedPrincipals: undefined,
      policy: undefined,
      denyRules: [],
    };
  }

  /** Returns the key unless it is unknown or past its deletion date, deleting it in that case. */
  private liveKey(keyId: string): KeyRecord | undefined {
    const record = this.keys.get(keyId);
    if (record === undefined) return undefined;
    if (record.deletionDate !== undefined && record.deletionDate * 1000 <= this.now()) {
      this.deleteKey(record);
      this.changed();
      return undefined;
    }
    return record;
  }

  private purgeExpired(): void {
    const nowSeconds = this.now() / 1000;
    let purged = false;
    for (const record of this.keys.values()) {
      if (record.deletionDate !== undefined && record.deletionDate <= nowSeconds) {
        this.deleteKey(record);
        purged = true;
      }
    }
    if (purged) this.changed();
  }

  private deleteKey(record: KeyRecord): void {
    this.keys.delete(record.keyId);
    this.deletedKeyIds.add(record.keyId);
    for (const [name, alias] of this.aliases) {
      if (alias.targetKeyId === record.keyId) this.aliases.delete(name);
    }
  }

  private validateAliasName(aliasName: string): void {
    if (!ALIAS_NAME.test(aliasName)) {
      throw validationError(`Alias name ${aliasName} is invalid. It must begin with "alias/" followed by 1 to 250 letters, digits, "/", "_" or "-".`);
    }
    if (aliasName.startsWith('alias/aws/')) {
      throw new KmsError('NotAuthorizedException', `Alias name ${aliasName} is reserved for AWS managed keys.`);
    }
  }

  private changed(): void {
    this.onChange?.();
  }
}
