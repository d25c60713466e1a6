//! Query limits as an async-graphql extension, in place of the schema's built-in
//! `limit_depth`/`limit_complexity` (which refuse graphql-js's standard introspection
//! query and give no error code):
//!
//! - cost: async-graphql's complexity, where a list field costs its size (`first`, see
//!   `pagination::page_cost`) times its selection; reported as `extensions.cost`;
//! - depth, except for introspection-only operations, which get graphql-js's
//!   `MaxIntrospectionDepthRule` instead (the standard query is 15 deep, but only its
//!   list fields can multiply the answer, and they may not nest three deep);
//! - response keys aliased per request, with fragments counted where they are spread;
//! - introspection when it is turned off.
//!
//! Every refusal carries `extensions.code`; so do parse and validation failures.

use std::sync::{Arc, Mutex};

use async_graphql::extensions::{
    Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextRequest, NextValidation,
};
use async_graphql::parser::types::{ExecutableDocument, OperationType, Selection, SelectionSet};
use async_graphql::{
    ErrorExtensionValues, Response, ServerError, ServerResult, ValidationResult, Value, Variables,
};

use crate::auth::Identity;

pub const QUERY_TOO_COMPLEX: &str = "QUERY_TOO_COMPLEX";
pub const QUERY_TOO_DEEP: &str = "QUERY_TOO_DEEP";
pub const TOO_MANY_ALIASES: &str = "TOO_MANY_ALIASES";
pub const INTROSPECTION_DISABLED: &str = "INTROSPECTION_DISABLED";
pub const GRAPHQL_PARSE_FAILED: &str = "GRAPHQL_PARSE_FAILED";
pub const GRAPHQL_VALIDATION_FAILED: &str = "GRAPHQL_VALIDATION_FAILED";

/// Selections a document may expand to (fragments inlined) before it is refused
/// unexamined: a guard against fragments spread exponentially many times.
const EXPANSION_BUDGET: usize = 100_000;
/// Fragments spread inside fragments at most this deep: the walk (and the validation after
/// it) recurses once per level, so a long chain must not reach the stack's end.
const MAX_FRAGMENT_NESTING: usize = 32;
/// graphql-js: these introspection list fields may nest at most two deep.
const INTROSPECTION_LISTS: [&str; 4] = ["fields", "interfaces", "possibleTypes", "inputFields"];
const MAX_INTROSPECTION_LIST_DEPTH: usize = 3;

#[derive(Clone, Copy, Debug)]
pub struct QueryLimits {
    pub max_depth: usize,
    pub max_complexity: usize,
    pub max_aliases: usize,
    pub introspection: bool,
}

impl ExtensionFactory for QueryLimits {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(LimitsExtension {
            limits: *self,
            shape: Mutex::default(),
            complexity: Mutex::default(),
        })
    }
}

/// One per request.
struct LimitsExtension {
    limits: QueryLimits,
    shape: Mutex<Option<Shape>>,
    complexity: Mutex<Option<usize>>,
}

#[async_graphql::async_trait::async_trait]
impl Extension for LimitsExtension {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        let mut response = next.run(ctx).await;
        if let Some(requested) = *self.complexity.lock().unwrap() {
            response
                .extensions
                .insert("cost".into(), cost(requested, self.limits.max_complexity));
        }
        response
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await.map_err(|e| {
            // The parser's own nesting guard is a depth limit too.
            let code = if e.message.starts_with("The recursion depth") {
                QUERY_TOO_DEEP
            } else {
                GRAPHQL_PARSE_FAILED
            };
            with_code(e, code)
        })?;
        *self.shape.lock().unwrap() = Some(Shape::of(&document));
        Ok(document)
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        let limits = &self.limits;
        let shape = self.shape.lock().unwrap().take().unwrap_or_default();
        // A node token sends heartbeats and nothing else (its rate limit is the node's).
        if matches!(ctx.data_opt::<Identity>(), Some(Identity::Node { .. }))
            && !shape.heartbeat_only
        {
            return Err(vec![error(
                "FORBIDDEN",
                "node tokens only send heartbeats (nodeHeartbeat)",
            )]);
        }
        if shape.introspects && !limits.introspection {
            return Err(vec![error(
                INTROSPECTION_DISABLED,
                "introspection is disabled on this server",
            )]);
        }
        if shape.too_large {
            return Err(vec![error(
                QUERY_TOO_COMPLEX,
                format!(
                    "the query expands to more than {EXPANSION_BUDGET} selections, or nests fragments more than {MAX_FRAGMENT_NESTING} deep"
                ),
            )]);
        }
        let result = next.run(ctx).await.map_err(|errors| {
            errors
                .into_iter()
                .map(|e| with_code(e, GRAPHQL_VALIDATION_FAILED))
                .collect::<Vec<_>>()
        })?;
        *self.complexity.lock().unwrap() = Some(result.complexity);

        if shape.introspection_too_deep {
            return Err(vec![error(
                QUERY_TOO_DEEP,
                "Maximum introspection depth exceeded",
            )]);
        }
        if !shape.introspection_only && result.depth > limits.max_depth {
            let mut e = error(
                QUERY_TOO_DEEP,
                format!(
                    "the query is nested {} deep; at most {} is allowed",
                    result.depth, limits.max_depth
                ),
            );
            set(&mut e, "depth", result.depth);
            set(&mut e, "limit", limits.max_depth);
            return Err(vec![e]);
        }
        if result.complexity > limits.max_complexity {
            let mut e = error(
                QUERY_TOO_COMPLEX,
                format!(
                    "the query costs {}; at most {} is allowed (a list costs its size times its selection)",
                    result.complexity, limits.max_complexity
                ),
            );
            if let Some(ext) = &mut e.extensions {
                ext.set("cost", cost(result.complexity, limits.max_complexity));
            }
            return Err(vec![e]);
        }
        if shape.aliases > limits.max_aliases {
            let mut e = error(
                TOO_MANY_ALIASES,
                format!(
                    "the query has {} aliases; at most {} are allowed",
                    shape.aliases, limits.max_aliases
                ),
            );
            set(&mut e, "aliases", shape.aliases);
            set(&mut e, "limit", limits.max_aliases);
            return Err(vec![e]);
        }
        Ok(result)
    }
}

fn cost(requested: usize, limit: usize) -> Value {
    Value::from_json(serde_json::json!({ "requested": requested, "limit": limit }))
        .expect("numbers are GraphQL values")
}

fn error(code: &str, message: impl Into<String>) -> ServerError {
    with_code(ServerError::new(message, None), code)
}

/// Adds `code` unless the error already has one.
fn with_code(mut e: ServerError, code: &str) -> ServerError {
    let ext = e
        .extensions
        .get_or_insert_with(ErrorExtensionValues::default);
    if ext.get("code").is_none() {
        ext.set("code", code);
    }
    e
}

fn set(e: &mut ServerError, key: &str, n: usize) {
    if let Some(ext) = &mut e.extensions {
        ext.set(key, n as u64);
    }
}

/// What the limits need to know about a document beyond async-graphql's depth and
/// complexity, found in one walk with fragments expanded where they are spread.
#[derive(Debug, Default, PartialEq, Eq)]
struct Shape {
    aliases: usize,
    /// Every operation is a query selecting only `__schema`, `__type` and `__typename`.
    introspection_only: bool,
    /// Some operation selects `__schema` or `__type`.
    introspects: bool,
    introspection_too_deep: bool,
    too_large: bool,
    /// Every operation is a mutation selecting only `nodeHeartbeat` (and `__typename`):
    /// all a node token may do.
    heartbeat_only: bool,
}

impl Shape {
    fn of(doc: &ExecutableDocument) -> Shape {
        let mut walk = Walk {
            doc,
            shape: Shape::default(),
            selections: 0,
            spreading: Vec::new(),
            other_roots: false,
            beyond_heartbeats: false,
        };
        for (_, operation) in doc.operations.iter() {
            if operation.node.ty != OperationType::Query {
                walk.other_roots = true;
            }
            if operation.node.ty != OperationType::Mutation {
                walk.beyond_heartbeats = true;
            }
            walk.selection_set(&operation.node.selection_set.node, Level::Root);
        }
        walk.shape.introspection_only = !walk.other_roots;
        walk.shape.heartbeat_only = !walk.beyond_heartbeats;
        walk.shape
    }
}

#[derive(Clone, Copy)]
enum Level {
    Root,
    /// Under a root field; inside introspection, how many list fields enclose this.
    Inner(Option<usize>),
}

struct Walk<'a> {
    doc: &'a ExecutableDocument,
    shape: Shape,
    selections: usize,
    /// Fragments being expanded: a cycle is left to validation to report.
    spreading: Vec<&'a str>,
    other_roots: bool,
    /// A root field other than `nodeHeartbeat` and `__typename`, or a non-mutation.
    beyond_heartbeats: bool,
}

impl<'a> Walk<'a> {
    fn selection_set(&mut self, set: &'a SelectionSet, level: Level) {
        for item in &set.items {
            self.selections += 1;
            if self.selections > EXPANSION_BUDGET {
                self.shape.too_large = true;
            }
            if self.shape.too_large {
                return;
            }
            match &item.node {
                Selection::Field(field) => {
                    let field = &field.node;
                    if field.alias.is_some() {
                        self.shape.aliases += 1;
                    }
                    let name = field.name.node.as_str();
                    if matches!(level, Level::Root)
                        && !matches!(name, "nodeHeartbeat" | "__typename")
                    {
                        self.beyond_heartbeats = true;
                    }
                    let inner = match level {
                        Level::Root => match name {
                            "__schema" | "__type" => {
                                self.shape.introspects = true;
                                Some(0)
                            }
                            "__typename" => None,
                            _ => {
                                self.other_roots = true;
                                None
                            }
                        },
                        Level::Inner(lists) => {
                            lists.map(|n| n + usize::from(INTROSPECTION_LISTS.contains(&name)))
                        }
                    };
                    if inner.is_some_and(|n| n >= MAX_INTROSPECTION_LIST_DEPTH) {
                        self.shape.introspection_too_deep = true;
                    }
                    self.selection_set(&field.selection_set.node, Level::Inner(inner));
                }
                Selection::FragmentSpread(spread) => {
                    let name = spread.node.fragment_name.node.as_str();
                    let Some(fragment) = self.doc.fragments.get(&spread.node.fragment_name.node)
                    else {
                        continue;
                    };
                    if self.spreading.contains(&name) {
                        continue;
                    }
                    if self.spreading.len() >= MAX_FRAGMENT_NESTING {
                        self.shape.too_large = true;
                        return;
                    }
                    self.spreading.push(name);
                    self.selection_set(&fragment.node.selection_set.node, level);
                    self.spreading.pop();
                }
                Selection::InlineFragment(inline) => {
                    self.selection_set(&inline.node.selection_set.node, level)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graphql::{SchemaLimits, build_schema};

    #[tokio::test]
    async fn standard_introspection_query_passes_the_default_limits() {
        let settings = crate::config::Settings::from_vars(Vec::new()).unwrap();
        let schema = build_schema(SchemaLimits::from(&settings));
        let query = include_str!("../../tests/fixtures/introspection-query.graphql");
        let response = schema.execute(query).await;
        assert!(response.errors.is_empty(), "{:?}", response.errors);
        let Some(Value::Object(cost)) = response.extensions.get("cost") else {
            panic!("no cost: {:?}", response.extensions);
        };
        let requested = cost.get("requested").unwrap().clone().into_json().unwrap();
        assert!(requested.as_u64().unwrap() < settings.max_query_complexity as u64);
        println!("the standard introspection query costs {requested}");
    }

    fn shape(query: &str) -> Shape {
        Shape::of(&async_graphql::parser::parse_query(query).unwrap())
    }

    #[test]
    fn aliases_count_where_fragments_are_spread() {
        let s = shape("{ a: me { id } ...F ...F } fragment F on Query { b: me { x: id } }");
        assert_eq!(s.aliases, 5);
        assert!(!s.introspection_only);
    }

    #[test]
    fn introspection_only_means_only_meta_fields_in_queries() {
        assert!(shape("{ __typename __schema { types { name } } }").introspection_only);
        assert!(
            shape("query { ...F } fragment F on Query { __type(name: \"X\") { name } }")
                .introspects
        );
        assert!(!shape("{ __schema { types { name } } me { id } }").introspection_only);
        assert!(!shape("mutation { __typename }").introspection_only);
    }

    #[test]
    fn introspection_lists_may_not_nest_three_deep() {
        let two = "{ __schema { types { fields { type { fields { name } } } } } }";
        assert!(!shape(two).introspection_too_deep);
        let three = "{ __schema { types { fields { type { fields { type { interfaces { name } } } } } } } }";
        assert!(shape(three).introspection_too_deep);
        let via_fragment = "{ __type(name: \"Q\") { ...T } } fragment T on __Type { fields { type { inputFields { type { possibleTypes { name } } } } } }";
        assert!(shape(via_fragment).introspection_too_deep);
    }

    #[test]
    fn fragment_cycles_and_bombs_end_the_walk() {
        let cycle = shape("{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }");
        assert!(!cycle.too_large);
        let mut q = String::from("{ ...F0 }");
        for i in 0..20 {
            q += &format!(" fragment F{i} on Query {{ ...F{n} ...F{n} }}", n = i + 1);
        }
        q += " fragment F20 on Query { __typename }";
        assert!(shape(&q).too_large);
    }

    #[tokio::test]
    async fn a_long_chain_of_fragments_is_refused_before_it_reaches_the_stack_end() {
        let mut q = String::from("{ ...F0 }");
        for i in 0..20_000 {
            q += &format!(" fragment F{i} on Query {{ ...F{} }}", i + 1);
        }
        q += " fragment F20000 on Query { __typename }";
        assert!(shape(&q).too_large);
        let settings = crate::config::Settings::from_vars(Vec::new()).unwrap();
        let response = build_schema(SchemaLimits::from(&settings)).execute(q).await;
        let code = response.errors[0]
            .extensions
            .as_ref()
            .and_then(|e| e.get("code"))
            .cloned();
        // Refused (by the parser's own nesting guard or by the walk), never a crash.
        assert!(
            code == Some(Value::from(QUERY_TOO_DEEP))
                || code == Some(Value::from(QUERY_TOO_COMPLEX)),
            "{:?}",
            response.errors
        );
    }
}
