//! The API's protobuf codec: prost's, except that a request that does not
//! decode is the caller's mistake (INVALID_ARGUMENT naming the field), where
//! tonic's codec answers INTERNAL with no details.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};

use crate::error::ApiError;

/// The codec the generated service uses (`build.rs` names it).
#[derive(Debug)]
pub(crate) struct ApiCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ApiCodec<T, U> {
    fn default() -> Self {
        ApiCodec(PhantomData)
    }
}

impl<T, U> Codec for ApiCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = ApiDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ApiDecoder(PhantomData)
    }
}

/// Decodes with prost, mapping its errors to [`ApiError::MalformedRequest`].
#[derive(Debug)]
pub(crate) struct ApiDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for ApiDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|error| {
            let (field, detail) = split_decode_error(&error.to_string());
            Status::from(ApiError::MalformedRequest { field, detail })
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// Splits prost's message (`failed to decode Protobuf message: Inner.field:
/// Outer.inner: what went wrong`, innermost first) into the field's path
/// from the request (`inner.field`) and what went wrong.
fn split_decode_error(message: &str) -> (Option<String>, String) {
    let rest = message.strip_prefix("failed to decode Protobuf message: ").unwrap_or(message);
    let mut fields = Vec::new();
    let mut rest = rest;
    while let Some((segment, tail)) = rest.split_once(": ") {
        let Some((message_name, field)) = segment.split_once('.') else { break };
        let is_name = |text: &str| !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !is_name(message_name) || !is_name(field) {
            break;
        }
        fields.push(field);
        rest = tail;
    }
    fields.reverse();
    let field = (!fields.is_empty()).then(|| fields.join("."));
    (field, rest.to_owned())
}

#[cfg(test)]
mod tests {
    use super::split_decode_error;

    #[test]
    fn decode_errors_name_the_field_from_the_request() {
        let cases = [
            (
                "failed to decode Protobuf message: PurchaseProof.purchase_token: VerifyRequest.proof: invalid string value: data is not UTF-8 encoded",
                Some("proof.purchase_token"),
                "invalid string value: data is not UTF-8 encoded",
            ),
            (
                "failed to decode Protobuf message: VerifyRequest.app_id: buffer underflow",
                Some("app_id"),
                "buffer underflow",
            ),
            ("failed to decode Protobuf message: invalid wire type value: 7", None, "invalid wire type value: 7"),
            ("failed to decode Protobuf message: buffer underflow", None, "buffer underflow"),
        ];
        for (message, field, detail) in cases {
            let (found_field, found_detail) = split_decode_error(message);
            assert_eq!(found_field.as_deref(), field, "{message}");
            assert_eq!(found_detail, detail, "{message}");
        }
    }
}
