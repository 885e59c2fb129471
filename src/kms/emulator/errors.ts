/**
 * An AWS KMS error as the JSON 1.1 protocol sends it: `name` becomes the
 * `__type` field and the `x-amzn-ErrorType` header, `status` the HTTP status.
 */
export class KmsError extends Error {
  readonly status: number;

  constructor(name: string, message: string, status = 400) {
    super(message);
    this.name = name;
    this.status = status;
  }
}

export function validationError(message: string): KmsError {
  return new KmsError('ValidationException', message);
}

export function notFound(message: string): KmsError {
  return new KmsError('NotFoundException', message);
}

export function invalidState(message: string): KmsError {
  return new KmsError('KMSInvalidStateException', message);
}

export function invalidCiphertext(): KmsError {
  return new KmsError('InvalidCiphertextException', 'The ciphertext is invalid or cannot be decrypted with the given encryption context.');
}

export function throttled(): KmsError {
  return new KmsError('ThrottlingException', 'Rate exceeded');
}
