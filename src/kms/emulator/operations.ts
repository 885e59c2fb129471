import { randomBytes } from 'node:crypto';

import { KmsError, validationError } from './errors.js';
import {
  type Input,
  optionalArray,
  optionalContext,
  optionalEnum,
  optionalInteger,
  optionalString,
  paginate,
  requireBlob,
  requireString,
} from './input.js';
import { DEFAULT_POLICY_NAME } from './key-policy.js';
import type { KeyRecord, KeySpec, KeyStore, KeyUsage, Tag } from './key-store.js';

/** Per-request state that an operation fills in for the request log. */
export interface OperationContext {
  store: KeyStore;
  /** ARNs of the keys the request used. */
  resources: string[];
  /** Access key id from the request's SigV4 Authorization header; keys with an access list check it. */
  principal?: string | undefined;
  /** Name of the KMS operation, which key policy Deny statements match against. */
  operation?: string | undefined;
}

export type Operation = (input: Input, context: OperationContext) => Record<string, unknown>;

/** Operations counted against the shared requests-per-second quota. */
export const CRYPTOGRAPHIC_OPERATIONS: ReadonlySet<string> = new Set([
  'Encrypt',
  'Decrypt',
  'ReEncrypt',
  'GenerateDataKey',
  'GenerateDataKeyWithoutPlaintext',
  'GenerateMac',
  'VerifyMac',
]);

/** Operations that CloudTrail marks readOnly. All others change the store. */
export const READ_ONLY_OPERATIONS: ReadonlySet<string> = new Set([
  ...CRYPTOGRAPHIC_OPERATIONS,
  'DescribeKey',
  'ListKeys',
  'ListAliases',
  'ListResourceTags',
  'GetKeyPolicy',
]);

/** AWS KMS operations that the emulator does not implement, answered with UnsupportedOperationException. */
export const UNIMPLEMENTED_OPERATIONS: ReadonlySet<string> = new Set([
  'ConnectCustomKeyStore', 'CreateCustomKeyStore', 'CreateGrant', 'DeleteCustomKeyStore', 'DeleteImportedKeyMaterial',
  'DeriveSharedSecret', 'DescribeCustomKeyStores', 'DisableKeyRotation', 'DisconnectCustomKeyStore', 'EnableKeyRotation',
  'GenerateDataKeyPair', 'GenerateDataKeyPairWithoutPlaintext', 'GenerateRandom', 'GetKeyRotationStatus',
  'GetParametersForImport', 'GetPublicKey', 'ImportKeyMaterial', 'ListGrants', 'ListKeyPolicies', 'ListKeyRotations',
  'ListRetirableGrants', 'ReplicateKey', 'RetireGrant', 'RevokeGrant', 'RotateKeyOnDemand', 'Sign',
  'UpdateCustomKeyStore', 'UpdateKeyDescription', 'UpdatePrimaryRegion', 'Verify',
]);

const ENCRYPTION_ALGORITHMS = ['SYMMETRIC_DEFAULT', 'RSAES_OAEP_SHA_1', 'RSAES_OAEP_SHA_256', 'SM2PKE'] as const;
const MAC_ALGORITHMS = ['HMAC_SHA_224', 'HMAC_SHA_256', 'HMAC_SHA_384', 'HMAC_SHA_512'] as const;
const KEY_SPECS = [
  'SYMMETRIC_DEFAULT', 'RSA_2048', 'RSA_3072', 'RSA_4096', 'ECC_NIST_P256', 'ECC_NIST_P384', 'ECC_NIST_P521',
  'ECC_SECG_P256K1', 'HMAC_224', 'HMAC_256', 'HMAC_384', 'HMAC_512', 'SM2',
] as const;
const KEY_USAGES = ['ENCRYPT_DECRYPT', 'SIGN_VERIFY', 'GENERATE_VERIFY_MAC', 'KEY_AGREEMENT'] as const;
const DATA_KEY_SPECS = ['AES_256', 'AES_128'] as const;
const MAX_PLAINTEXT_BYTES = 4096;
const MAX_CIPHERTEXT_BYTES = 6144;

function useKey(context: OperationContext, reference: string): KeyRecord {
  const record = context.store.resolveKey(reference);
  context.resources.push(record.arn);
  context.store.assertAllowed(record, context.principal, context.operation);
  return record;
}

function useBlobKey(context: OperationContext, blob: Buffer): KeyRecord {
  const record = context.store.keyForBlob(blob);
  if (!context.resources.includes(record.arn)) context.resources.push(record.arn);
  context.store.assertAllowed(record, context.principal, context.operation);
  return record;
}

/** Rejects a PolicyName other than "default", the only policy a KMS key has. */
function checkPolicyName(input: Input): void {
  const name = optionalString(input, 'PolicyName');
  if (name !== undefined && name !== DEFAULT_POLICY_NAME) throw new KmsError('NotFoundException', `Key policy ${name} does not exist; the only policy name is "default".`);
}

/** Rejects an encryption algorithm that a symmetric key does not support. */
function checkEncryptionAlgorithm(input: Input, name: string, record: KeyRecord): 'SYMMETRIC_DEFAULT' {
  const algorithm = optionalEnum(input, name, ENCRYPTION_ALGORITHMS) ?? 'SYMMETRIC_DEFAULT';
  if (algorithm !== 'SYMMETRIC_DEFAULT') {
    throw new KmsError('InvalidKeyUsageException', `${name} ${algorithm} is not supported by ${record.arn}; it supports SYMMETRIC_DEFAULT.`);
  }
  return algorithm;
}

function checkMacAlgorithm(input: Input, store: KeyStore, record: KeyRecord): 'HMAC_SHA_256' {
  const algorithm = optionalEnum(input, 'MacAlgorithm', MAC_ALGORITHMS);
  if (algorithm === undefined) throw validationError(`1 validation error detected: Value null at 'macAlgorithm' failed to satisfy constraint: Member must not be null`);
  store.assertUsable(record, 'GENERATE_VERIFY_MAC');
  if (algorithm !== 'HMAC_SHA_256') {
    throw new KmsError('InvalidKeyUsageException', `MacAlgorithm ${algorithm} is not supported by ${record.arn}; it supports HMAC_SHA_256.`);
  }
  return algorithm;
}

function incorrectKey(): KmsError {
  return new KmsError('IncorrectKeyException', 'The key ID in the request does not identify a KMS key that can perform this operation.');
}

function parseTags(input: Input, name: string): Tag[] {
  const tags: Tag[] = [];
  for (const item of optionalArray(input, name, 50) ?? []) {
    const tag = item as Partial<Tag> | null;
    const keyValid = typeof tag?.TagKey === 'string' && tag.TagKey.length >= 1 && tag.TagKey.length <= 128;
    const valueValid = typeof tag?.TagValue === 'string' && tag.TagValue.length <= 256;
    if (!keyValid || !valueValid) throw new KmsError('TagException', `${name} must be a list of {TagKey: 1 to 128 characters, TagValue: 0 to 256 characters}.`);
    tags.push({ TagKey: tag.TagKey as string, TagValue: tag.TagValue as string });
  }
  return tags;
}

function generateDataKey(input: Input, context: OperationContext): { key: KeyRecord; plaintext: Buffer; blob: Buffer } {
  const reference = requireString(input, 'KeyId');
  const keySpec = optionalEnum(input, 'KeySpec', DATA_KEY_SPECS);
  const numberOfBytes = optionalInteger(input, 'NumberOfBytes', 1, 1024);
  const encryptionContext = optionalContext(input, 'EncryptionContext');
  if (keySpec !== undefined && numberOfBytes !== undefined) throw validationError('KeySpec and NumberOfBytes are mutually exclusive; pass one of them.');
  if (keySpec === undefined && numberOfBytes === undefined) throw validationError('KeySpec or NumberOfBytes is required.');

  const key = useKey(context, reference);
  const plaintext = randomBytes(numberOfBytes ?? (keySpec === 'AES_128' ? 16 : 32));
  const blob = context.store.encrypt(key, plaintext, encryptionContext);
  return { key, plaintext, blob };
}

export const OPERATIONS: ReadonlyMap<string, Operation> = new Map<string, Operation>([
  ['CreateKey', (input, context) => {
    const description = input.Description ?? '';
    if (typeof description !== 'string' || description.length > 8192) throw validationError('Description must be a string of at most 8192 characters.');
    const keySpec = optionalEnum(input, 'KeySpec', KEY_SPECS) ?? optionalEnum(input, 'CustomerMasterKeySpec', KEY_SPECS);
    const keyUsage = optionalEnum(input, 'KeyUsage', KEY_USAGES);
    const origin = optionalString(input, 'Origin');
    if (keySpec !== undefined && keySpec !== 'SYMMETRIC_DEFAULT' && keySpec !== 'HMAC_256') {
      throw new KmsError('UnsupportedOperationException', `KeySpec ${keySpec} is not supported by this emulator; use SYMMETRIC_DEFAULT or HMAC_256.`);
    }
    if (origin !== undefined && origin !== 'AWS_KMS') {
      throw new KmsError('UnsupportedOperationException', `Origin ${origin} is not supported by this emulator; use AWS_KMS.`);
    }
    if (input.MultiRegion === true) throw new KmsError('UnsupportedOperationException', 'Multi-Region keys are not supported by this emulator.');
    if (keyUsage !== undefined && keyUsage !== 'ENCRYPT_DECRYPT' && keyUsage !== 'GENERATE_VERIFY_MAC') {
      throw validationError(`KeyUsage ${keyUsage} is not compatible with KeySpec ${keySpec ?? 'SYMMETRIC_DEFAULT'}.`);
    }
    const record = context.store.createKey({
      description,
      keySpec: keySpec as KeySpec | undefined,
      keyUsage: keyUsage as KeyUsage | undefined,
      tags: parseTags(input, 'Tags'),
    });
    context.resources.push(record.arn);
    return { KeyMetadata: context.store.describe(record) };
  }],

  ['DescribeKey', (input, context) => ({ KeyMetadata: context.store.describe(useKey(context, requireString(input, 'KeyId'))) })],

  ['ListKeys', (input, context) => {
    const { page, ...rest } = paginate(context.store.listKeys(), input, 1000, 100);
    return { Keys: page.map((record) => ({ KeyId: record.keyId, KeyArn: record.arn })), ...rest };
  }],

  ['CreateAlias', (input, context) => {
    const alias = context.store.createAlias(requireString(input, 'AliasName', 256), requireString(input, 'TargetKeyId'));
    context.resources.push(context.store.keyArn(alias.targetKeyId));
    return {};
  }],

  ['UpdateAlias', (input, context) => {
    context.store.updateAlias(requireString(input, 'AliasName', 256), requireString(input, 'TargetKeyId'));
    return {};
  }],

  ['DeleteAlias', (input, context) => {
    context.store.deleteAlias(requireString(input, 'AliasName', 256));
    return {};
  }],

  ['ListAliases', (input, context) => {
    const store = context.store;
    const { page, ...rest } = paginate(store.listAliases(optionalString(input, 'KeyId')), input, 100, 50);
    const aliases = page.map((alias) => ({
      AliasName: alias.aliasName,
      AliasArn: store.aliasArn(alias.aliasName),
      TargetKeyId: alias.targetKeyId,
      CreationDate: alias.creationDate,
      LastUpdatedDate: alias.lastUpdatedDate,
    }));
    return { Aliases: aliases, ...rest };
  }],

  ['Encrypt', (input, context) => {
    const reference = requireString(input, 'KeyId');
    const plaintext = requireBlob(input, 'Plaintext', 1, MAX_PLAINTEXT_BYTES);
    const encryptionContext = optionalContext(input, 'EncryptionContext');
    const key = useKey(context, reference);
    context.store.assertUsable(key, 'ENCRYPT_DECRYPT');
    const algorithm = checkEncryptionAlgorithm(input, 'EncryptionAlgorithm', key);
    const blob = context.store.encrypt(key, plaintext, encryptionContext);
    return { CiphertextBlob: blob.toString('base64'), KeyId: key.arn, EncryptionAlgorithm: algorithm };
  }],

  ['Decrypt', (input, context) => {
    const blob = requireBlob(input, 'CiphertextBlob', 1, MAX_CIPHERTEXT_BYTES);
    const encryptionContext = optionalContext(input, 'EncryptionContext');
    const reference = optionalString(input, 'KeyId');
    const named = reference === undefined ? undefined : useKey(context, reference);
    const key = useBlobKey(context, blob);
    if (named !== undefined && named.keyId !== key.keyId) throw incorrectKey();
    context.store.assertUsable(key, 'ENCRYPT_DECRYPT');
    const algorithm = checkEncryptionAlgorithm(input, 'EncryptionAlgorithm', key);
    const plaintext = context.store.decrypt(key, blob, encryptionContext);
    return { KeyId: key.arn, Plaintext: plaintext.toString('base64'), EncryptionAlgorithm: algorithm };
  }],

  ['ReEncrypt', (input, context) => {
    const blob = requireBlob(input, 'CiphertextBlob', 1, MAX_CIPHERTEXT_BYTES);
    const destinationReference = requireString(input, 'DestinationKeyId');
    const sourceContext = optionalContext(input, 'SourceEncryptionContext');
    const destinationContext = optionalContext(input, 'DestinationEncryptionContext');
    const sourceReference = optionalString(input, 'SourceKeyId');

    const named = sourceReference === undefined ? undefined : useKey(context, sourceReference);
    const source = useBlobKey(context, blob);
    if (named !== undefined && named.keyId !== source.keyId) throw incorrectKey();
    const destination = context.store.resolveKey(destinationReference);
    if (!context.resources.includes(destination.arn)) context.resources.push(destination.arn);

    context.store.assertUsable(source, 'ENCRYPT_DECRYPT');
    context.store.assertUsable(destination, 'ENCRYPT_DECRYPT');
    const sourceAlgorithm = checkEncryptionAlgorithm(input, 'SourceEncryptionAlgorithm', source);
    const destinationAlgorithm = checkEncryptionAlgorithm(input, 'DestinationEncryptionAlgorithm', destination);

    const plaintext = context.store.decrypt(source, blob, sourceContext);
    const rewrapped = context.store.encrypt(destination, plaintext, destinationContext);
    plaintext.fill(0);
    return {
      CiphertextBlob: rewrapped.toString('base64'),
      SourceKeyId: source.arn,
      KeyId: destination.arn,
      SourceEncryptionAlgorithm: sourceAlgorithm,
      DestinationEncryptionAlgorithm: destinationAlgorithm,
    };
  }],

  ['GenerateDataKey', (input, context) => {
    const { key, plaintext, blob } = generateDataKey(input, context);
    return { CiphertextBlob: blob.toString('base64'), Plaintext: plaintext.toString('base64'), KeyId: key.arn };
  }],

  ['GenerateDataKeyWithoutPlaintext', (input, context) => {
    const { key, plaintext, blob } = generateDataKey(input, context);
    plaintext.fill(0);
    return { CiphertextBlob: blob.toString('base64'), KeyId: key.arn };
  }],

  ['GenerateMac', (input, context) => {
    const reference = requireString(input, 'KeyId');
    const message = requireBlob(input, 'Message', 1, MAX_PLAINTEXT_BYTES);
    const key = useKey(context, reference);
    const algorithm = checkMacAlgorithm(input, context.store, key);
    return { Mac: context.store.generateMac(key, message).toString('base64'), MacAlgorithm: algorithm, KeyId: key.arn };
  }],

  ['VerifyMac', (input, context) => {
    const reference = requireString(input, 'KeyId');
    const message = requireBlob(input, 'Message', 1, MAX_PLAINTEXT_BYTES);
    const mac = requireBlob(input, 'Mac', 1, MAX_CIPHERTEXT_BYTES);
    const key = useKey(context, reference);
    const algorithm = checkMacAlgorithm(input, context.store, key);
    if (!context.store.verifyMac(key, message, mac)) {
      throw new KmsError('KMSInvalidMacException', 'The MAC does not match the message, key and MAC algorithm.');
    }
    return { KeyId: key.arn, MacValid: true, MacAlgorithm: algorithm };
  }],

  ['EnableKey', (input, context) => {
    context.store.enableKey(useKey(context, requireString(input, 'KeyId')).keyId);
    return {};
  }],

  ['DisableKey', (input, context) => {
    context.store.disableKey(useKey(context, requireString(input, 'KeyId')).keyId);
    return {};
  }],

  ['ScheduleKeyDeletion', (input, context) => {
    const reference = requireString(input, 'KeyId');
    const days = input.PendingWindowInDays ?? 30;
    if (typeof days !== 'number') throw validationError('PendingWindowInDays must be an integer from 7 to 30.');
    const record = context.store.scheduleKeyDeletion(useKey(context, reference).keyId, days);
    return { KeyId: record.arn, DeletionDate: record.deletionDate, KeyState: record.state, PendingWindowInDays: record.pendingWindowInDays };
  }],

  ['CancelKeyDeletion', (input, context) => {
    const record = context.store.cancelKeyDeletion(useKey(context, requireString(input, 'KeyId')).keyId);
    return { KeyId: record.arn };
  }],

  ['TagResource', (input, context) => {
    const reference = requireString(input, 'KeyId');
    const tags = parseTags(input, 'Tags');
    context.store.tagResource(useKey(context, reference).keyId, tags);
    return {};
  }],

  ['UntagResource', (input, context) => {
    const reference = requireString(input, 'KeyId');
    const tagKeys = optionalArray(input, 'TagKeys', 50) ?? [];
    if (!tagKeys.every((key) => typeof key === 'string')) throw validationError('TagKeys must be a list of strings.');
    context.store.untagResource(useKey(context, reference).keyId, tagKeys as string[]);
    return {};
  }],

  ['GetKeyPolicy', (input, context) => {
    const record = useKey(context, requireString(input, 'KeyId'));
    checkPolicyName(input);
    return { Policy: context.store.getKeyPolicy(record), PolicyName: DEFAULT_POLICY_NAME };
  }],

  ['PutKeyPolicy', (input, context) => {
    const record = useKey(context, requireString(input, 'KeyId'));
    checkPolicyName(input);
    const policy = requireString(input, 'Policy');
    if (policy.length > 32_768) throw validationError('Policy must be at most 32768 characters.');
    context.store.putKeyPolicy(record, policy);
    return {};
  }],

  ['ListResourceTags', (input, context) => {
    const tags = context.store.listResourceTags(useKey(context, requireString(input, 'KeyId')).keyId);
    const { page, ...rest } = paginate(tags, input, 50, 50);
    return { Tags: page, ...rest };
  }],
]);
