//! Errors of the EC2 provisioner: what was being done, the API's error code and message, and
//! for the usual causes (credentials, quotas, an unknown instance type) what to do.

use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Configuration the operator must fix (region, credentials, image).
    #[error("{0}")]
    Config(String),
    /// An EC2 call failed.
    #[error("{action}: {}{message}{}", code.as_deref().map(|c| format!("{c}: ")).unwrap_or_default(), hint(code.as_deref()))]
    Api {
        action: String,
        code: Option<String>,
        message: String,
    },
    /// A waiter gave up, or a resource would not go away in time.
    #[error("{0}")]
    Timeout(String),
    /// The state could not be recorded; nothing more is created.
    #[error("recording the cluster's resources: {0}")]
    Record(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn api<E, R>(action: &str, e: SdkError<E, R>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let code = e.code().map(str::to_string);
        let message = match (e.code(), e.message()) {
            (Some(_), Some(m)) => m.to_string(),
            _ => DisplayErrorContext(&e).to_string(),
        };
        Error::Api {
            action: action.to_string(),
            code,
            message,
        }
    }

    /// The API's error code, if the call reached the API.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// The resource is already gone (deletes treat this as done).
    pub(crate) fn is_not_found(&self) -> bool {
        self.code().is_some_and(|c| {
            c.ends_with(".NotFound") || c.ends_with("NotFound") || c == "InvalidKeyPair.NotFound"
        })
    }

    /// Another resource still depends on this one (retried for a while).
    pub(crate) fn is_dependency(&self) -> bool {
        matches!(self.code(), Some("DependencyViolation" | "ResourceInUse"))
    }
}

fn hint(code: Option<&str>) -> &'static str {
    match code {
        Some("AuthFailure" | "UnrecognizedClientException" | "InvalidClientTokenId") => {
            "\nCheck the credentials: --profile NAME, `aws sso login`, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY."
        }
        Some("UnauthorizedOperation") => {
            "\nThe credentials lack an EC2 permission named above; ask for it or use another --profile."
        }
        Some("InstanceLimitExceeded" | "VcpuLimitExceeded" | "VpcLimitExceeded" | "AddressLimitExceeded") => {
            "\nA quota is reached: delete clusters you no longer need or request a higher quota, then run the same create again to resume."
        }
        Some(
            "InvalidParameterValue"
            | "Unsupported"
            | "InsufficientInstanceCapacity"
            | "InvalidInstanceType"
            | "InvalidInstanceType.NotFound",
        ) => {
            "\nCheck the instance types (--app-type, --agent-type, --db-type, --proxy-type) and the region; run the create again, with corrected types, to resume."
        }
        _ => "",
    }
}
