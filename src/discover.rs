//! DISCOVER: which of the workspace's data attributes likely hold personal
//! data, from their name, label, description, type and whether they are
//! custom (facts.md §4.7), and the `[cache.contacts] custom_attributes`
//! allow-list that would keep only the others. A suggestion for the operator
//! to review: nothing is allow-listed by this.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Words that mark an attribute as personal data when they appear in its
/// name, label or description (as whole words of the snake-cased text).
const PERSONAL_WORDS: &[&str] = &[
    "email",
    "mail",
    "phone",
    "mobile",
    "telephone",
    "name",
    "firstname",
    "lastname",
    "surname",
    "address",
    "street",
    "city",
    "zip",
    "zipcode",
    "postcode",
    "postal",
    "birth",
    "birthday",
    "birthdate",
    "dob",
    "age",
    "gender",
    "sex",
    "ssn",
    "passport",
    "national",
    "tax",
    "iban",
    "bank",
    "card",
    "ip",
    "location",
    "latitude",
    "longitude",
    "geo",
    "country",
    "region",
    "user",
    "userid",
    "external",
    "username",
    "login",
    "linkedin",
    "twitter",
    "facebook",
    "instagram",
    "avatar",
    "photo",
    "picture",
    "salary",
    "income",
    "health",
    "religion",
    "ethnicity",
    "nationality",
    "device",
    "browser",
    "signature",
    "note",
    "comment",
];

/// How likely an attribute is to hold personal data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Its name or description says so.
    Likely,
    /// Custom free text: it can hold anything an agent or integration puts in.
    Maybe,
    Unlikely,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attribute {
    pub model: String,
    pub name: String,
    pub full_name: String,
    pub data_type: String,
    pub custom: bool,
    pub archived: bool,
    pub verdict: Verdict,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Discovery {
    pub attributes: Vec<Attribute>,
    /// Custom contact attributes unlikely to hold personal data: a starting
    /// point for `[cache.contacts] custom_attributes`, to review.
    pub suggested_allow_list: Vec<String>,
}

/// The words of a text: lower-cased, split at anything not a letter or a
/// digit and at lower-to-upper case changes (`homeAddress` → home, address).
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut prev_lower = false;
    for c in text.chars() {
        if !c.is_alphanumeric() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            prev_lower = false;
            continue;
        }
        if c.is_uppercase() && prev_lower && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        prev_lower = c.is_lowercase();
        cur.extend(c.to_lowercase());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Classifies one `data_attribute` object as Intercom returns it.
pub fn classify(a: &Value) -> Attribute {
    let text = |k: &str| a.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let (name, full_name, data_type, model) = (text("name"), text("full_name"), text("data_type"), text("model"));
    let custom = a.get("custom").and_then(Value::as_bool).unwrap_or(false);
    let archived = a.get("archived").and_then(Value::as_bool).unwrap_or(false);
    let enumerated = a
        .get("options")
        .and_then(Value::as_array)
        .is_some_and(|o| !o.is_empty());
    let mut seen = words(&name);
    seen.extend(words(&text("label")));
    seen.extend(words(&text("description")));
    // "Company name" is a business's, not a person's; company attributes
    // are personal only through the stronger words.
    let weak_for_companies = [
        "name", "country", "region", "city", "address", "user", "location", "tax",
    ];
    let hit = seen.iter().find(|w| {
        PERSONAL_WORDS.contains(&w.as_str()) && !(model == "company" && weak_for_companies.contains(&w.as_str()))
    });
    let (verdict, reason) = match hit {
        Some(w) => (Verdict::Likely, format!("'{w}' in its name or description")),
        None if custom && data_type == "string" && !enumerated => (
            Verdict::Maybe,
            "custom free text: it holds whatever is put in it".to_string(),
        ),
        None if enumerated => (Verdict::Unlikely, "a value from a fixed list".to_string()),
        None => (Verdict::Unlikely, format!("a {data_type} that names no personal data")),
    };
    Attribute {
        model,
        name,
        full_name,
        data_type,
        custom,
        archived,
        verdict,
        reason,
    }
}

/// Classifies every attribute and suggests the allow-list.
pub fn discovery(attributes: &[Value]) -> Discovery {
    let attributes: Vec<Attribute> = attributes.iter().map(classify).collect();
    let mut suggested: Vec<String> = attributes
        .iter()
        .filter(|a| a.model == "contact" && a.custom && !a.archived && a.verdict == Verdict::Unlikely)
        .map(|a| a.name.clone())
        .collect();
    suggested.sort();
    suggested.dedup();
    Discovery {
        attributes,
        suggested_allow_list: suggested,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn attr(model: &str, name: &str, data_type: &str, custom: bool) -> Value {
        json!({"type":"data_attribute","name":name,"full_name":name,"label":name,"data_type":data_type,"custom":custom,"archived":false,"model":model})
    }

    #[test]
    fn personal_words_in_any_case_style() {
        assert_eq!(words("homeAddress"), ["home", "address"]);
        assert_eq!(words("Date of birth"), ["date", "of", "birth"]);
        for (name, verdict) in [
            ("homeAddress", Verdict::Likely),
            ("billing_email", Verdict::Likely),
            ("dob", Verdict::Likely),
            ("plan", Verdict::Maybe),
            ("seats", Verdict::Unlikely),
        ] {
            let t = if name == "seats" { "integer" } else { "string" };
            assert_eq!(classify(&attr("contact", name, t, true)).verdict, verdict, "{name}");
        }
        assert_eq!(
            classify(&attr("company", "name", "string", false)).verdict,
            Verdict::Unlikely
        );
        assert_eq!(
            classify(&attr("company", "owner_email", "string", true)).verdict,
            Verdict::Likely
        );
        // "emailed" and "ipsum" are not "email" and "ip".
        assert_eq!(
            classify(&attr("contact", "emailed_count", "integer", true)).verdict,
            Verdict::Unlikely
        );
    }
}
