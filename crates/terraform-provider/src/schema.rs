//! Declarative schemas: what each attribute is, and how it plans.
//!
//! A resource declares its attributes once — type, whether the user sets it, a default, whether
//! changing it replaces the object, whether it stays as it was across updates — and the
//! generic planner ([`crate::plan`]), the schema Terraform sees and the data source derived
//! from it all follow from that declaration.

use std::collections::BTreeMap;

use crate::pb::tfplugin6 as tf;
use crate::value::{Type, Value};

/// Who sets an attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The user must set it.
    Required,
    /// The user may set it; unset is null.
    Optional,
    /// The user may set it; unset, the provider chooses (a default, or the server's value).
    OptionalComputed,
    /// Only the provider sets it.
    Computed,
}

/// One attribute of a schema.
#[derive(Debug, Clone)]
pub struct Attr {
    /// Its name in configurations.
    pub name: &'static str,
    /// Its type.
    pub ty: Type,
    /// Who sets it.
    pub mode: Mode,
    /// Hidden in plans and output.
    pub sensitive: bool,
    /// For people, in Markdown.
    pub description: &'static str,
    /// A change replaces the object (destroy, then create).
    pub replace: bool,
    /// A computed value that never changes once set (e.g. a uid): plans keep it.
    pub stable: bool,
    /// Changing it in place leaves every computed value as it is (labels, a policy).
    pub quiet: bool,
    /// The value planned when an optional attribute is left unset.
    pub default: Option<Value>,
    /// The default applies on create only: left unset later, the object's current value
    /// stands (a value changed out of band that the configuration does not mention is left
    /// alone).
    pub initial_only: bool,
}

impl Attr {
    fn new(name: &'static str, ty: Type) -> Attr {
        Attr {
            name,
            ty,
            mode: Mode::Optional,
            sensitive: false,
            description: "",
            replace: false,
            stable: false,
            quiet: false,
            default: None,
            initial_only: false,
        }
    }

    /// A string attribute (optional until told otherwise).
    pub fn string(name: &'static str) -> Attr {
        Attr::new(name, Type::String)
    }

    /// A number attribute.
    pub fn number(name: &'static str) -> Attr {
        Attr::new(name, Type::Number)
    }

    /// A boolean attribute.
    pub fn bool(name: &'static str) -> Attr {
        Attr::new(name, Type::Bool)
    }

    /// A map of strings.
    pub fn string_map(name: &'static str) -> Attr {
        Attr::new(name, Type::Map(Box::new(Type::String)))
    }

    /// A list of strings.
    pub fn string_list(name: &'static str) -> Attr {
        Attr::new(name, Type::List(Box::new(Type::String)))
    }

    /// The user must set it.
    pub fn required(mut self) -> Attr {
        self.mode = Mode::Required;
        self
    }

    /// Only the provider sets it.
    pub fn computed(mut self) -> Attr {
        self.mode = Mode::Computed;
        self
    }

    /// The user may set it; when unset, the provider plans `default`.
    pub fn default(mut self, default: Value) -> Attr {
        self.mode = Mode::OptionalComputed;
        self.default = Some(default);
        self
    }

    /// The user may set it; when unset, the provider plans `default` on create and keeps the
    /// object's current value on update.
    pub fn initial(mut self, default: Value) -> Attr {
        self = self.default(default);
        self.initial_only = true;
        self
    }

    /// The user may set it; when unset, the server's value is kept.
    pub fn optional_computed(mut self) -> Attr {
        self.mode = Mode::OptionalComputed;
        self
    }

    /// Hidden in plans and output.
    pub fn sensitive(mut self) -> Attr {
        self.sensitive = true;
        self
    }

    /// Changing it replaces the object.
    pub fn replace(mut self) -> Attr {
        self.replace = true;
        self
    }

    /// Computed once, then kept by every plan.
    pub fn stable(mut self) -> Attr {
        self.stable = true;
        self
    }

    /// Changing it in place changes no computed value: plans of such changes alone keep them
    /// all (a labels-only change keeps a VM's pid known).
    pub fn quiet(mut self) -> Attr {
        self.quiet = true;
        self
    }

    /// Documentation shown by tools.
    pub fn describe(mut self, description: &'static str) -> Attr {
        self.description = description;
        self
    }

    fn to_proto(&self) -> tf::schema::Attribute {
        tf::schema::Attribute {
            name: self.name.to_owned(),
            r#type: self.ty.to_json().to_string().into_bytes(),
            description: self.description.to_owned(),
            required: self.mode == Mode::Required,
            optional: matches!(self.mode, Mode::Optional | Mode::OptionalComputed),
            computed: matches!(self.mode, Mode::Computed | Mode::OptionalComputed),
            sensitive: self.sensitive,
            description_kind: tf::StringKind::Markdown as i32,
            deprecated: false,
        }
    }
}

/// How often a nested block may be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nesting {
    /// At most once (`timeouts { … }`); its value is an object, or null when absent.
    Single,
    /// Any number of times, in order (`network { … } network { … }`); its value is a list.
    List,
}

/// A nested block.
#[derive(Debug, Clone)]
pub struct Block {
    /// Its name in configurations.
    pub name: &'static str,
    /// How often it may be written.
    pub nesting: Nesting,
    /// What it holds.
    pub schema: Schema,
}

impl Block {
    /// The type of its value.
    pub fn ty(&self) -> Type {
        match self.nesting {
            Nesting::Single => self.schema.ty(),
            Nesting::List => Type::List(Box::new(self.schema.ty())),
        }
    }
}

/// The schema of a provider, resource or data source.
#[derive(Debug, Clone, Default)]
pub struct Schema {
    /// The state format's version ([`crate::Resource`]s upgrade older state).
    pub version: i64,
    /// For people, in Markdown.
    pub description: &'static str,
    /// Its attributes, in declaration order.
    pub attrs: Vec<Attr>,
    /// Its single nested blocks.
    pub blocks: Vec<Block>,
}

impl Schema {
    /// An empty schema described by `description`.
    pub fn new(description: &'static str) -> Schema {
        Schema {
            description,
            ..Schema::default()
        }
    }

    /// Adds an attribute.
    pub fn attr(mut self, attr: Attr) -> Schema {
        self.attrs.push(attr);
        self
    }

    /// Adds a nested block written at most once.
    pub fn block(mut self, name: &'static str, schema: Schema) -> Schema {
        self.blocks.push(Block {
            name,
            nesting: Nesting::Single,
            schema,
        });
        self
    }

    /// Adds a nested block written any number of times, in order.
    pub fn list_block(mut self, name: &'static str, schema: Schema) -> Schema {
        self.blocks.push(Block {
            name,
            nesting: Nesting::List,
            schema,
        });
        self
    }

    /// The nested block named `name`.
    pub fn find_block(&self, name: &str) -> Option<&Block> {
        self.blocks.iter().find(|b| b.name == name)
    }

    /// The attribute named `name`.
    pub fn find(&self, name: &str) -> Option<&Attr> {
        self.attrs.iter().find(|a| a.name == name)
    }

    /// The object type of values of this schema.
    pub fn ty(&self) -> Type {
        let mut attrs: BTreeMap<String, Type> = self
            .attrs
            .iter()
            .map(|a| (a.name.to_owned(), a.ty.clone()))
            .collect();
        for block in &self.blocks {
            attrs.insert(block.name.to_owned(), block.ty());
        }
        Type::Object(attrs)
    }

    /// The same attributes, all computed but those named in `inputs`, which become required:
    /// the schema of a data source that reads what the resource manages. Nested blocks but
    /// `timeouts` become computed attributes of the same type (a data source's blocks would be
    /// for the user to write).
    pub fn read_only(&self, description: &'static str, inputs: &[&str]) -> Schema {
        let blocks = self
            .blocks
            .iter()
            .filter(|b| b.name != "timeouts")
            .map(|b| Attr::new(b.name, b.ty()).describe(b.schema.description));
        Schema {
            version: 0,
            description,
            attrs: self
                .attrs
                .iter()
                .cloned()
                .chain(blocks)
                .map(|a| Attr {
                    mode: if inputs.contains(&a.name) {
                        Mode::Required
                    } else {
                        Mode::Computed
                    },
                    replace: false,
                    stable: false,
                    default: None,
                    ..a
                })
                .collect(),
            blocks: Vec::new(),
        }
    }

    fn block_proto(&self) -> tf::schema::Block {
        tf::schema::Block {
            version: self.version,
            attributes: self.attrs.iter().map(Attr::to_proto).collect(),
            block_types: self
                .blocks
                .iter()
                .map(|b| tf::schema::NestedBlock {
                    type_name: b.name.to_owned(),
                    block: Some(b.schema.block_proto()),
                    nesting: match b.nesting {
                        Nesting::Single => tf::schema::nested_block::NestingMode::Single,
                        Nesting::List => tf::schema::nested_block::NestingMode::List,
                    } as i32,
                    min_items: 0,
                    max_items: 0,
                })
                .collect(),
            description: self.description.to_owned(),
            description_kind: tf::StringKind::Markdown as i32,
            deprecated: false,
        }
    }

    /// The schema as Terraform reads it.
    pub fn to_proto(&self) -> tf::Schema {
        tf::Schema {
            version: self.version,
            block: Some(self.block_proto()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_map_to_terraform_flags() {
        let schema = Schema::new("x")
            .attr(Attr::string("name").required().replace())
            .attr(Attr::number("cpus").default(Value::Number(1.0)))
            .attr(Attr::string("uid").computed().stable())
            .block("timeouts", Schema::new("t").attr(Attr::string("create")));
        let proto = schema.to_proto();
        let block = proto.block.unwrap();
        let flags: Vec<_> = block
            .attributes
            .iter()
            .map(|a| (a.name.as_str(), a.required, a.optional, a.computed))
            .collect();
        assert_eq!(
            flags,
            [
                ("name", true, false, false),
                ("cpus", false, true, true),
                ("uid", false, false, true)
            ]
        );
        assert_eq!(block.block_types[0].type_name, "timeouts");
        let Type::Object(attrs) = schema.ty() else {
            panic!("an object")
        };
        assert!(attrs.contains_key("timeouts"));
    }

    #[test]
    fn read_only_schemas_compute_everything_but_inputs() {
        let schema = Schema::new("x")
            .attr(Attr::string("name").required().replace())
            .attr(Attr::number("cpus").default(Value::Number(1.0)))
            .block("timeouts", Schema::new("t"));
        let ro = schema.read_only("d", &["name"]);
        assert_eq!(ro.find("name").unwrap().mode, Mode::Required);
        assert_eq!(ro.find("cpus").unwrap().mode, Mode::Computed);
        assert!(ro.find("cpus").unwrap().default.is_none());
        assert!(ro.blocks.is_empty());
    }
}
