//! Domain values as read-model columns: each is stored as its text form
//! and read back into its type as the row is decoded, so no caller parses a
//! stored value. A value that does not parse fails the read (it can only
//! come from a write outside this program) instead of reaching a request.

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo, PgValueRef};
use sqlx::{Decode, Encode, Postgres, Type};

use crate::domain::{KeyId, KeyStatus, KeyType, LeakAction, OrgId, Plan, Scope};

macro_rules! text_column {
    ($type:ty, $what:literal, |$text:ident| $parse:expr, |$value:ident| $render:expr) => {
        impl Type<Postgres> for $type {
            fn type_info() -> PgTypeInfo {
                <&str as Type<Postgres>>::type_info()
            }

            fn compatible(ty: &PgTypeInfo) -> bool {
                <&str as Type<Postgres>>::compatible(ty)
            }
        }

        impl PgHasArrayType for $type {
            fn array_type_info() -> PgTypeInfo {
                <&str as PgHasArrayType>::array_type_info()
            }
        }

        impl<'r> Decode<'r, Postgres> for $type {
            fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
                let $text = <&str as Decode<Postgres>>::decode(value)?;
                let parsed: Option<$type> = $parse;
                parsed.ok_or_else(|| format!(concat!("stored ", $what, " '{}' is malformed"), $text).into())
            }
        }

        impl Encode<'_, Postgres> for $type {
            fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
                let $value = self;
                <&str as Encode<Postgres>>::encode_by_ref(&&*$render, buf)
            }
        }
    };
}

text_column!(KeyId, "key id", |text| text.parse().ok(), |id| id.to_string());
text_column!(OrgId, "organization id", |text| text.parse().ok(), |id| id.to_string());
text_column!(KeyType, "key type", |text| KeyType::parse(text), |t| t.as_str());
text_column!(KeyStatus, "key status", |text| KeyStatus::parse(text), |s| s.as_str());
text_column!(Scope, "scope", |text| text.parse().ok(), |s| s.as_str());
text_column!(Plan, "plan", |text| Plan::parse(text), |p| p.as_str());
text_column!(LeakAction, "leak action", |text| LeakAction::parse(text), |a| a
    .as_str());
