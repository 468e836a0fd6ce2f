#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod command;
mod context;
pub mod fs;
pub mod http;
mod result;

pub use command::{Command, CommandOutput};
pub use context::Context;
pub use result::{Failure, FailureKind, Outcome, Verdict};

/// The WASI 0.2 bindings (filesystem, http, ...), for what the SDK does not wrap,
/// such as creating symlinks.
pub use wasi;

/// Bindings generated from `wit/action.wit` (world `plugin`, a superset of
/// `action`, `source` and `rule`), documented in the WIT. Plugins normally do
/// not need them.
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../../wit",
        pub_export_macro: true,
        default_bindings_module: "sluice_sdk::bindings",
    });
}

/// Export `run` (a `fn(&Context) -> Result<Outcome, Failure>`) as the action's
/// entry point. Call it once, at the root of the plugin crate.
#[macro_export]
macro_rules! export_action {
    ($run:path) => {
        #[doc(hidden)]
        struct __SluiceAction;

        impl $crate::bindings::Guest for __SluiceAction {
            fn run(
                invocation: $crate::bindings::Invocation,
            ) -> ::core::result::Result<$crate::bindings::Outcome, $crate::bindings::Failure> {
                $crate::__run(invocation, $run)
            }

            fn check(
                _config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                _last_revision: ::core::option::Option<::std::string::String>,
            ) -> ::core::result::Result<::std::vec::Vec<::std::string::String>, $crate::bindings::Failure> {
                ::core::result::Result::Err($crate::__not_a_source())
            }

            fn evaluate(
                _config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
            ) -> ::core::result::Result<$crate::bindings::Verdict, $crate::bindings::Failure> {
                ::core::result::Result::Err($crate::__not_a_rule())
            }
        }

        $crate::bindings::export!(__SluiceAction with_types_in $crate::bindings);
    };
}

/// Export `run` and `check` for a source plugin (world `source`): `check` is a
/// `fn(&[(String, String)], Option<&str>) -> Result<Vec<String>, Failure>`
/// returning revisions newer than the last one seen, oldest first.
#[macro_export]
macro_rules! export_source {
    ($run:path, $check:path) => {
        #[doc(hidden)]
        struct __SluiceSource;

        impl $crate::bindings::Guest for __SluiceSource {
            fn run(
                invocation: $crate::bindings::Invocation,
            ) -> ::core::result::Result<$crate::bindings::Outcome, $crate::bindings::Failure> {
                $crate::__run(invocation, $run)
            }

            fn check(
                config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                last_revision: ::core::option::Option<::std::string::String>,
            ) -> ::core::result::Result<::std::vec::Vec<::std::string::String>, $crate::bindings::Failure> {
                $check(&config, last_revision.as_deref()).map_err($crate::Failure::into_wit)
            }

            fn evaluate(
                _config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
            ) -> ::core::result::Result<$crate::bindings::Verdict, $crate::bindings::Failure> {
                ::core::result::Result::Err($crate::__not_a_rule())
            }
        }

        $crate::bindings::export!(__SluiceSource with_types_in $crate::bindings);
    };
}

/// Export `evaluate` for a rule plugin (world `rule`, used by a stage
/// condition's `provider = "plugin"` rule): a
/// `fn(&Context) -> Result<Verdict, Failure>`. The context holds only the
/// rule's configuration (and logging, secrets and commands); an `Err` counts
/// as a rule that did not pass.
#[macro_export]
macro_rules! export_rule {
    ($evaluate:path) => {
        #[doc(hidden)]
        struct __SluiceRule;

        impl $crate::bindings::Guest for __SluiceRule {
            fn run(
                _invocation: $crate::bindings::Invocation,
            ) -> ::core::result::Result<$crate::bindings::Outcome, $crate::bindings::Failure> {
                ::core::result::Result::Err($crate::__not_an_action())
            }

            fn check(
                _config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
                _last_revision: ::core::option::Option<::std::string::String>,
            ) -> ::core::result::Result<::std::vec::Vec<::std::string::String>, $crate::bindings::Failure> {
                ::core::result::Result::Err($crate::__not_a_source())
            }

            fn evaluate(
                config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
            ) -> ::core::result::Result<$crate::bindings::Verdict, $crate::bindings::Failure> {
                $crate::__evaluate(config, $evaluate)
            }
        }

        $crate::bindings::export!(__SluiceRule with_types_in $crate::bindings);
    };
}

/// The failure `run` returns for plugins exported with [`export_rule!`].
#[doc(hidden)]
pub fn __not_an_action() -> bindings::Failure {
    Failure::config("this plugin is a rule (world rule): use it in a stage condition").into_wit()
}

/// The failure `evaluate` returns for plugins that are not rules.
#[doc(hidden)]
pub fn __not_a_rule() -> bindings::Failure {
    Failure::config("this plugin is not a rule: it has no `evaluate`").into_wit()
}

/// Glue for [`export_rule!`].
#[doc(hidden)]
pub fn __evaluate(
    config: Vec<(String, String)>,
    evaluate: impl FnOnce(&Context) -> Result<Verdict, Failure>,
) -> Result<bindings::Verdict, bindings::Failure> {
    let ctx = Context::from_config(config);
    evaluate(&ctx)
        .map(Verdict::into_wit)
        .map_err(Failure::into_wit)
}

/// The failure `check` returns for plugins exported with [`export_action!`].
#[doc(hidden)]
pub fn __not_a_source() -> bindings::Failure {
    Failure::config("this plugin is not a source: it has no `check`").into_wit()
}

/// Glue for [`export_action!`]: converts between the WIT types and the SDK types.
#[doc(hidden)]
pub fn __run(
    invocation: bindings::Invocation,
    run: impl FnOnce(&Context) -> Result<Outcome, Failure>,
) -> Result<bindings::Outcome, bindings::Failure> {
    let ctx = Context::from_invocation(invocation);
    run(&ctx).map(Outcome::into_wit).map_err(Failure::into_wit)
}
