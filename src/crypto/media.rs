//! Attachments of encrypted rooms: encrypted before upload, decrypted after download, with
//! matrix-sdk-crypto's attachment cipher (AES-CTR with a SHA-256 of the ciphertext).

use std::io::{Cursor, Read};

use matrix_sdk_crypto::{AttachmentDecryptor, AttachmentEncryptor, MediaEncryptionInfo};
use ruma::{OwnedMxcUri, events::room::EncryptedFile};

use super::CryptoError;

/// Encrypts a file: the ciphertext to upload, and what a message needs to name it once the
/// ciphertext has its `mxc://` URI.
pub(crate) fn encrypt_attachment(data: &[u8]) -> (Vec<u8>, MediaEncryptionInfo) {
    let mut reader = Cursor::new(data);
    let mut encryptor = AttachmentEncryptor::new(&mut reader);
    let mut ciphertext = Vec::with_capacity(data.len());
    encryptor.read_to_end(&mut ciphertext).expect("reading from memory does not fail");
    (ciphertext, encryptor.finish())
}

/// The `file` of a message for ciphertext uploaded at `url`.
pub(crate) fn encrypted_file(url: OwnedMxcUri, info: MediaEncryptionInfo) -> EncryptedFile {
    EncryptedFile::new(url, info.encryption_info, info.hashes)
}

/// Decrypts a downloaded attachment, checking its hash.
///
/// # Errors
/// When the hash does not match, or the file names an unknown version or no SHA-256.
pub(crate) fn decrypt_attachment(
    ciphertext: &[u8],
    file: &EncryptedFile,
) -> Result<Vec<u8>, CryptoError> {
    let mut reader = Cursor::new(ciphertext);
    let info = MediaEncryptionInfo::from(file.clone());
    let bad = |e: &dyn std::fmt::Display| CryptoError::Attachment(e.to_string());
    let mut decryptor = AttachmentDecryptor::new(&mut reader, info).map_err(|e| bad(&e))?;
    let mut plaintext = Vec::with_capacity(ciphertext.len());
    decryptor.read_to_end(&mut plaintext).map_err(|e| bad(&e))?;
    Ok(plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attachment_comes_back_whole_and_a_changed_byte_is_refused() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let (ciphertext, info) = encrypt_attachment(&data);
        assert_ne!(ciphertext, data);
        let file = encrypted_file(OwnedMxcUri::from("mxc://x/y"), info);
        assert_eq!(decrypt_attachment(&ciphertext, &file).unwrap(), data);
        let mut tampered = ciphertext;
        tampered[500] ^= 1;
        assert!(decrypt_attachment(&tampered, &file).is_err());
    }
}
